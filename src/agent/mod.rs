//! The site agent: reads `TILLIT_EVENTS` through its own durable consumer, verifies every
//! envelope, fetches what an event names (sealed to the agent), writes files atomically, runs a
//! hook once per applied batch, and acknowledges with a signed envelope.
//!
//! Delivery: the consumer lives on the hub (JetStream domain `hub`), so events published while
//! the site is cut off wait there and arrive after the heal, in order. The agent applies each
//! stream sequence at most once: its state file (`FILES/.tillit-agent.json`, written after the
//! hook succeeded) records the last sequence applied and each secret's version; a redelivered
//! event at or below it is acknowledged without being applied again. An agent killed mid-apply
//! leaves every file old or new (temp file, fsync, rename) and re-applies the unacknowledged
//! batch on restart. Replay protection is bound to the stream: an envelope's `seq` must be the
//! `TILLIT_EVENTS` sequence it was stored at, which the hub's JetStream stamps on every message
//! it copies into the site's own stream (`TILLIT_SITE_<site>`, header `Nats-Stream-Source`).

use crate::client::session::Session;
use crate::client::ClientError;
use crate::envelope::{EnvelopeError, TrustSet, Verifier};
use crate::fsutil::write_atomic;
use crate::layout::{IdentityDir, SiteDir};
use crate::proto::{AckData, AckReply, AckRequest};
use crate::subjects;
use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod apply;
mod decide;
mod site_cert;
use decide::{decide, origin_seq, Decision};
use site_cert::SITE_CHECK_EVERY;

/// Most events applied as one batch (one hook run, one acknowledgement).
pub const MAX_BATCH: usize = 256;
/// How long an acknowledgement envelope is valid.
const ACK_TTL_SECS: i64 = 300;
/// How often a long batch tells the consumer it is still being worked on (its ack wait is 5 s:
/// the bound on how long a killed agent's unacknowledged batch waits before redelivery).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long the connection may stay down before the agent checks whether its credentials are
/// refused (checked again as often; twice refused in a row, it stops).
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// Longest a hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("identity {0} is not a site agent (enroll with a token from `tillit site add`)")]
    NotAnAgent(String),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("agent state {path} is damaged ({reason}); move it aside to re-apply everything")]
    State { path: String, reason: String },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("trust set: {0}")]
    Trust(#[from] EnvelopeError),
    #[error("site server files: {0}")]
    SiteFiles(String),
    #[error("the servers refuse this agent's credentials ({0}): it was revoked, or its site removed; enroll a new agent with a token from `tillit token create --site SITE` (or `tillit site add`)")]
    Refused(String),
}

/// What the agent has applied (persisted after each successful batch).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    /// Stream sequence of the last event applied.
    pub last_seq: u64,
    /// Secret path → version written.
    #[serde(default)]
    pub secrets: BTreeMap<String, u32>,
    /// Fingerprint (sha256 of the PEM) of the CA bundle written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_sha256: Option<String>,
    /// Stream sequence of the CA bundle written: an older bundle never replaces a newer one.
    #[serde(default)]
    pub ca_seq: u64,
    /// Events refused (forged, replayed, for another site), by stream sequence.
    #[serde(default)]
    pub rejected: u64,
}

impl AgentState {
    pub fn load(files: &Path) -> Result<Self, AgentError> {
        let p = SiteDir::new(files).agent_state();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AgentError::State { path: p.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(AgentError::Io { path: p.display().to_string(), source: e }),
        }
    }

    fn save(&self, files: &Path) -> Result<(), AgentError> {
        let p = SiteDir::new(files).agent_state();
        let b = serde_json::to_vec_pretty(self).map_err(|e| AgentError::State { path: p.display().to_string(), reason: e.to_string() })?;
        write_atomic(&p, &b, 0o600).map_err(|e| AgentError::Io { path: p.display().to_string(), source: e })
    }
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub identity: PathBuf,
    pub files: PathBuf,
    /// Shell command run once per applied batch (`sh -c`).
    pub exec: Option<String>,
    pub nats: Option<String>,
    /// Most events per batch.
    pub batch: usize,
    /// Told after each batch the control plane recorded (benchmarks, embedding).
    pub notify: Option<tokio::sync::mpsc::UnboundedSender<Applied>>,
}

/// A batch applied and acknowledged.
#[derive(Debug, Clone)]
pub struct Applied {
    pub consumer: String,
    pub last_seq: u64,
    pub events: usize,
    pub at: std::time::Instant,
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::Io { path: p.display().to_string(), source: e }
}

/// The running agent.
pub struct Agent {
    session: Session,
    opts: AgentOptions,
    site: String,
    consumer: String,
    verifier: Verifier,
    state: AgentState,
    pull: Option<Pull>,
    clock: crate::clock::SharedClock,
}

/// The agent's way to its consumer: one inbox subscription serves all its pulls, each pull
/// answered on its own subject under it. (A subscription per fetch cost a SUB and an UNSUB for
/// every batch and every idle wait, each crossing the site's leafnode to the hub.)
struct Pull {
    consumer: jetstream::consumer::PullConsumer,
    context: jetstream::Context,
    inbox: async_nats::Subscriber,
    base: String,
    /// The last pull's number (its reply subject is `<base>.<n>`).
    n: u64,
}

impl Agent {
    /// Connect as the agent identity in `opts.identity` and load its state.
    pub async fn start(opts: AgentOptions) -> Result<Agent, AgentError> {
        Self::start_with_clock(opts, std::sync::Arc::new(crate::clock::SystemClock)).await
    }

    /// [`Agent::start`] with an injected clock (envelope expiry, renewal).
    pub async fn start_with_clock(opts: AgentOptions, clock: crate::clock::SharedClock) -> Result<Agent, AgentError> {
        let session = Session::connect_with_clock(&IdentityDir::new(&opts.identity), opts.nats.as_deref(), clock.clone()).await?;
        let info = session.identity();
        let site = info
            .service
            .as_ref()
            .and_then(crate::names::agent_site)
            .map(str::to_string)
            .filter(|_| info.kind == crate::identity::IdentityKind::Agent)
            .ok_or_else(|| AgentError::NotAnAgent(info.id.clone()))?;
        let consumer = subjects::agent_consumer(&site, &info.user_public_key);
        let files = session.files()?;
        let trust = TrustSet::from_jwks(files.trust_jwks.as_deref().unwrap_or("{\"keys\":[]}"))?;
        let verifier = Verifier::new(trust, vec![format!("site:{site}")], 1);
        crate::fsutil::create_dir(&opts.files, 0o700).map_err(io_err(&opts.files))?;
        let state = AgentState::load(&opts.files)?;
        let ca = SiteDir::new(&opts.files).ca();
        if !ca.exists() {
            write_atomic(&ca, files.ca_pem.as_bytes(), 0o600).map_err(io_err(&ca))?;
        }
        tracing::info!(site = %site, consumer = %consumer, last_seq = state.last_seq, "site agent started");
        Ok(Agent { session, opts, site, consumer, verifier, state, pull: None, clock })
    }

    /// The agent's NATS connection.
    pub fn client(&self) -> async_nats::Client {
        self.session.client()
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// Run until `stop` completes.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(stop);
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                r = self.await_unacknowledged() => match r {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(site = %self.site, "agent: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
            }
        }
        let mut site_checked: Option<std::time::Instant> = None;
        let mut down_since: Option<std::time::Instant> = None;
        let mut refused_probes = 0u64;
        loop {
            // Down for a while: a partition (carry on), or credentials refused (revoked, the site
            // removed)? Refused twice in a row, say so once and stop.
            if self.session.client().connection_state() == async_nats::connection::State::Connected {
                down_since = None;
                refused_probes = 0;
            } else if down_since.get_or_insert_with(std::time::Instant::now).elapsed() >= PROBE_AFTER {
                down_since = Some(std::time::Instant::now());
                match self.session.refused_now().await {
                    Some(why) => {
                        refused_probes += 1;
                        if refused_probes >= 2 {
                            return Err(AgentError::Refused(why));
                        }
                    }
                    None => refused_probes = 0,
                }
            }
            // Between batches (a step returns within its 5 s wait), never in the middle of one.
            if site_checked.is_none_or(|t| t.elapsed() >= SITE_CHECK_EVERY) {
                self.maintain_site_server().await;
                site_checked = Some(std::time::Instant::now());
            }
            tokio::select! {
                _ = &mut stop => return Ok(()),
                r = self.step(Duration::from_secs(5)) => match r {
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(site = %self.site, "agent: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
            }
        }
    }

    /// Fetch one batch (waiting up to `wait` for the first event) and apply it; returns how many
    /// events were applied.
    pub async fn step(&mut self, wait: Duration) -> Result<usize, AgentError> {
        let mut pull = match self.pull.take() {
            Some(p) => p,
            None => self.open_pull().await?,
        };
        let want = self.opts.batch.clamp(1, MAX_BATCH);
        pull.n += 1;
        let reply = format!("{}.{}", pull.base, pull.n);
        // Wait up to `wait` for the first event, then take what is there (as `fetch` does).
        let request = jetstream::consumer::pull::BatchConfig { batch: want, expires: Some(wait), no_wait: true, ..Default::default() };
        pull.consumer.request_batch(request, reply.clone().into()).await.map_err(|e| AgentError::JetStream(e.to_string()))?;
        // The server ends a pull with a status; a pull it never ends is given up a little after.
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(5);
        let mut msgs = Vec::new();
        let mut failed = None;
        while msgs.len() < want {
            let m = match tokio::time::timeout_at(deadline, pull.inbox.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    failed = Some("the pull inbox closed".to_string());
                    break;
                }
                Err(_) => {
                    failed = Some(format!("no end to a pull after {:?}", wait + Duration::from_secs(5)));
                    break;
                }
            };
            // Events arrive under their own subject; a status names the pull it ends. A status
            // of an earlier pull is skipped (each pull before this one ended, or its inbox was
            // dropped, so no event of theirs can arrive here).
            if m.status.is_some_and(|s| s != async_nats::StatusCode::OK) && m.subject.as_str() != reply {
                continue;
            }
            match m.status {
                None | Some(async_nats::StatusCode::OK) => msgs.push(jetstream::Message { message: m, context: pull.context.clone() }),
                Some(async_nats::StatusCode::IDLE_HEARTBEAT) => {}
                // Waited out, or nothing more to take: this pull is over.
                Some(async_nats::StatusCode::TIMEOUT) | Some(async_nats::StatusCode::NOT_FOUND) => break,
                Some(status) => {
                    failed = Some(format!("the consumer answered {status} {}", m.description.as_deref().unwrap_or("")));
                    break;
                }
            }
        }
        match failed {
            // A pull that did not end cleanly: the next one starts on a new inbox, so nothing of
            // this one arrives late (what it would have delivered comes back after the ack wait).
            Some(e) if msgs.is_empty() => return Err(AgentError::JetStream(e)),
            Some(_) => {}
            None => self.pull = Some(pull),
        }
        if msgs.is_empty() {
            return Ok(0);
        }
        let naks: Vec<jetstream::Message> = msgs.clone();
        match self.apply_batch(msgs).await {
            Ok(n) => Ok(n),
            Err(e) => {
                // Give the batch back at once: the consumer redelivers it before anything newer,
                // so events are applied in order (nothing applied is recorded yet).
                for m in &naks {
                    let _ = m.ack_with(jetstream::AckKind::Nak(None)).await;
                }
                Err(e)
            }
        }
    }

    /// Events a previous run of this agent received but never acknowledged come back only after
    /// the consumer's ack wait; fetching before that would hand out newer events first. Wait it
    /// out once, at start.
    async fn await_unacknowledged(&mut self) -> Result<(), AgentError> {
        let mut pull = self.open_pull().await?;
        let info = pull.consumer.info().await.map_err(|e| AgentError::JetStream(e.to_string()))?;
        let (pending, wait) = (info.num_ack_pending, info.config.ack_wait + Duration::from_millis(250));
        self.pull = Some(pull);
        if pending > 0 {
            tracing::info!(pending, "waiting {wait:?} for events from before the restart to come back first");
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The agent's consumer and a new inbox for its pulls.
    async fn open_pull(&self) -> Result<Pull, AgentError> {
        let context = jetstream::with_domain(self.session.client(), subjects::HUB_DOMAIN);
        let consumer = context
            .get_consumer_from_stream(&self.consumer, subjects::site_stream(&self.site))
            .await
            .map_err(|e| AgentError::JetStream(format!("consumer {}: {e}", self.consumer)))?;
        let base = self.session.client().new_inbox();
        let inbox = self.session.client().subscribe(format!("{base}.*")).await.map_err(|e| AgentError::JetStream(format!("pull inbox: {e}")))?;
        Ok(Pull { consumer, context, inbox, base, n: 0 })
    }

    async fn apply_batch(&mut self, msgs: Vec<jetstream::Message>) -> Result<usize, AgentError> {
        let now = self.clock.now_unix();
        let mut next = self.state.clone();
        let mut applied: Vec<(u64, String, String)> = Vec::new();
        let mut changed = false;
        let mut last_progress = std::time::Instant::now();
        for m in &msgs {
            if last_progress.elapsed() > PROGRESS_EVERY {
                keep_alive(&msgs).await;
                last_progress = std::time::Instant::now();
            }
            let seq = match origin_seq(m) {
                Ok(s) => s,
                Err(why) => {
                    tracing::warn!(site = %self.site, subject = %m.subject, "event rejected, not applied: {why}");
                    next.rejected += 1;
                    continue;
                }
            };
            match decide(&self.verifier, &self.site, &next, m.subject.as_str(), seq, &m.payload, now) {
                Decision::Skip => {}
                Decision::Reject(why) => {
                    tracing::warn!(site = %self.site, seq, subject = %m.subject, "event rejected, not applied: {why}");
                    next.rejected += 1;
                    next.last_seq = next.last_seq.max(seq);
                }
                Decision::Apply(v) => {
                    changed |= self.apply(&mut next, &v).await?;
                    next.last_seq = v.seq;
                    applied.push((v.seq, v.id.clone(), subjects::event_type(&v.kind)));
                }
            }
        }
        if changed {
            self.run_hook_until_ok(&msgs, &applied).await?;
        }
        next.save(&self.opts.files)?;
        self.state = next;
        if !applied.is_empty() {
            let r = self.report(&applied, crate::proto::AckOutcome::Applied, None).await?;
            if let Some(tx) = &self.opts.notify {
                let _ = tx.send(Applied { consumer: self.consumer.clone(), last_seq: r.last_seq, events: applied.len(), at: std::time::Instant::now() });
            }
        }
        for m in &msgs {
            m.ack().await.map_err(|e| AgentError::JetStream(format!("ack: {e}")))?;
        }
        tracing::info!(site = %self.site, applied = applied.len(), last_seq = self.state.last_seq, "batch applied");
        Ok(applied.len())
    }

    /// Acknowledge to the control plane with a signed envelope.
    async fn report(&self, batch: &[(u64, String, String)], outcome: crate::proto::AckOutcome, error: Option<String>) -> Result<AckReply, AgentError> {
        let info = self.session.identity();
        let data = AckData {
            site: self.site.clone(),
            outcome,
            seqs: batch.iter().map(|b| b.0).collect(),
            event_ids: batch.iter().map(|b| b.1.clone()).collect(),
            last_event_type: batch.last().map(|b| b.2.clone()),
            error,
        };
        let envelope = self.session.sign_envelope(
            subjects::ENVELOPE_AGENT_ACK,
            &format!("site:{}", self.site),
            &crate::envelope::issuer(&info.trust_domain),
            ACK_TTL_SECS,
            data,
        )?;
        Ok(self.session.call::<crate::proto::Ack>(AckRequest { envelope }).await?)
    }
}

/// Still working on a batch: keep its events from being delivered again meanwhile.
async fn keep_alive(msgs: &[jetstream::Message]) {
    for m in msgs {
        let _ = m.ack_with(jetstream::AckKind::Progress).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(AgentState::load(dir.path()).unwrap(), AgentState::default());
        let mut st = AgentState { last_seq: 12, ..Default::default() };
        st.secrets.insert("a/b/c/d".into(), 3);
        st.save(dir.path()).unwrap();
        assert_eq!(AgentState::load(dir.path()).unwrap(), st);
        std::fs::write(SiteDir::new(dir.path()).agent_state(), b"{not json").unwrap();
        assert!(matches!(AgentState::load(dir.path()), Err(AgentError::State { .. })));
    }
}
