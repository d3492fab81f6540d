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
use crate::layout::IdentityDir;
use crate::proto::{AckData, AckReply, AckRequest};
use crate::secrets::SecretPath;
use crate::subjects;
use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the agent's state file inside FILES.
pub const STATE_FILE: &str = ".tillit-agent.json";
/// Most events applied as one batch (one hook run, one acknowledgement).
pub const MAX_BATCH: usize = 256;
/// How long an acknowledgement envelope is valid.
const ACK_TTL_SECS: i64 = 300;
/// How often a long batch tells the consumer it is still being worked on (its ack wait is 5 s:
/// the bound on how long a killed agent's unacknowledged batch waits before redelivery).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
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
        let p = files.join(STATE_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AgentError::State { path: p.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(AgentError::Io { path: p.display().to_string(), source: e }),
        }
    }

    fn save(&self, files: &Path) -> Result<(), AgentError> {
        let p = files.join(STATE_FILE);
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

/// One event as the agent decided about it.
#[derive(Debug)]
enum Decision {
    /// Already applied (at or below the state's sequence).
    Skip,
    /// Refused: forged, replayed, re-purposed, or for another site.
    Reject(String),
    /// To apply.
    Apply(Box<Verified>),
}

#[derive(Debug)]
struct Verified {
    seq: u64,
    id: String,
    kind: String,
    data: serde_json::Value,
}

/// The event kind a subject names (`tillit.v1.events.<scope>.<kind…>`) and its scope.
pub fn subject_kind(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("tillit.v1.events.")?;
    let (scope, kind) = rest.split_once('.')?;
    (!kind.is_empty()).then_some((scope, kind))
}

/// The `TILLIT_EVENTS` sequence a message of the site's stream was copied from.
fn origin_seq(m: &jetstream::Message) -> Result<u64, String> {
    let v = m
        .headers
        .as_ref()
        .and_then(|h| h.get(subjects::HDR_STREAM_SOURCE))
        .ok_or_else(|| "no Nats-Stream-Source header (not copied from the event stream)".to_string())?;
    match subjects::stream_source(v.as_str()) {
        Some((name, seq)) if name == subjects::EVENTS_STREAM => Ok(seq),
        _ => Err(format!("Nats-Stream-Source {:?} does not name {}", v.as_str(), subjects::EVENTS_STREAM)),
    }
}

/// Decide about one delivered event (pure: no I/O).
fn decide(verifier: &Verifier, site: &str, state: &AgentState, subject: &str, stream_seq: u64, payload: &[u8], now: i64) -> Decision {
    if stream_seq <= state.last_seq {
        return Decision::Skip;
    }
    let Some((scope, kind)) = subject_kind(subject) else {
        return Decision::Reject(format!("subject {subject} is not an event subject"));
    };
    if scope != "all" && scope != site {
        return Decision::Reject(format!("event for site {scope}, not {site}"));
    }
    let Ok(token) = std::str::from_utf8(payload) else {
        return Decision::Reject("payload is not text".into());
    };
    let ev = match verifier.check::<serde_json::Value>(token, &format!("io.tillit.v1.{kind}"), now) {
        Ok(ev) => ev,
        Err(e) => return Decision::Reject(e.to_string()),
    };
    if ev.seq != Some(stream_seq) {
        return Decision::Reject(format!("envelope seq {:?} is not its stream sequence {stream_seq} (replayed or re-published)", ev.seq));
    }
    Decision::Apply(Box::new(Verified { seq: stream_seq, id: ev.id, kind: kind.to_string(), data: ev.data }))
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::Io { path: p.display().to_string(), source: e }
}

/// Where a secret is materialised.
pub fn secret_file(files: &Path, path: &SecretPath) -> PathBuf {
    files.join("secrets").join(&path.tenant).join(&path.project).join(&path.env).join(&path.name)
}

/// The running agent.
pub struct Agent {
    session: Session,
    opts: AgentOptions,
    site: String,
    consumer: String,
    verifier: Verifier,
    state: AgentState,
    pull: Option<jetstream::consumer::PullConsumer>,
    clock: crate::clock::SharedClock,
}

#[derive(Debug, Deserialize)]
struct SecretRotated {
    path: String,
    version: u32,
}

#[derive(Debug, Deserialize)]
struct CaRotated {
    bundle_pem: String,
    /// `added`, `switched`, `reissue` (re-issue the site server's certificate) or `retired`.
    #[serde(default)]
    phase: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TrustRotated {
    trust_jwks: serde_json::Value,
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
            .and_then(crate::estate::sites::agent_site)
            .map(str::to_string)
            .filter(|_| info.kind == crate::identity::IdentityKind::Agent)
            .ok_or_else(|| AgentError::NotAnAgent(info.id.clone()))?;
        let consumer = subjects::agent_consumer(&site, &info.user_public_key);
        let files = session.files()?;
        let trust = TrustSet::from_jwks(files.trust_jwks.as_deref().unwrap_or("{\"keys\":[]}"))?;
        let verifier = Verifier::new(trust, vec![format!("site:{site}")], 1);
        crate::fsutil::create_dir(&opts.files, 0o700).map_err(io_err(&opts.files))?;
        let state = AgentState::load(&opts.files)?;
        let ca = opts.files.join("ca.pem");
        if !ca.exists() {
            write_atomic(&ca, files.ca_pem.as_bytes(), 0o600).map_err(io_err(&ca))?;
        }
        tracing::info!(site = %site, consumer = %consumer, last_seq = state.last_seq, "site agent started");
        Ok(Agent { session, opts, site, consumer, verifier, state, pull: None, clock })
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
        loop {
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
        let consumer = match &self.pull {
            Some(c) => c.clone(),
            None => {
                let js = jetstream::with_domain(self.session.client(), subjects::HUB_DOMAIN);
                let c: jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(&self.consumer, subjects::site_stream(&self.site))
                    .await
                    .map_err(|e| AgentError::JetStream(format!("consumer {}: {e}", self.consumer)))?;
                self.pull = Some(c.clone());
                c
            }
        };
        let fetched = consumer
            .fetch()
            .max_messages(self.opts.batch.clamp(1, MAX_BATCH))
            .expires(wait)
            .messages()
            .await;
        let mut batch = match fetched {
            Ok(b) => b,
            Err(e) => {
                self.pull = None;
                return Err(AgentError::JetStream(e.to_string()));
            }
        };
        let mut msgs = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    if msgs.is_empty() {
                        self.pull = None;
                        return Err(AgentError::JetStream(e.to_string()));
                    }
                    break;
                }
            }
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
        let js = jetstream::with_domain(self.session.client(), subjects::HUB_DOMAIN);
        let mut c: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(&self.consumer, subjects::site_stream(&self.site))
            .await
            .map_err(|e| AgentError::JetStream(format!("consumer {}: {e}", self.consumer)))?;
        let info = c.info().await.map_err(|e| AgentError::JetStream(e.to_string()))?;
        let (pending, wait) = (info.num_ack_pending, info.config.ack_wait + Duration::from_millis(250));
        self.pull = Some(c);
        if pending > 0 {
            tracing::info!(pending, "waiting {wait:?} for events from before the restart to come back first");
            tokio::time::sleep(wait).await;
        }
        Ok(())
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
                    applied.push((v.seq, v.id.clone(), format!("io.tillit.v1.{}", v.kind)));
                }
            }
        }
        if changed {
            self.run_hook_until_ok(&msgs, &applied).await?;
        }
        next.save(&self.opts.files)?;
        self.state = next;
        if !applied.is_empty() {
            let r = self.report(&applied, "applied", None).await?;
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

    /// Apply one verified event to `next` and the files; true if a file changed.
    async fn apply(&mut self, next: &mut AgentState, v: &Verified) -> Result<bool, AgentError> {
        match v.kind.as_str() {
            "secret.rotated" => {
                let Ok(d) = serde_json::from_value::<SecretRotated>(v.data.clone()) else {
                    tracing::warn!(seq = v.seq, "secret.rotated without path/version; skipped");
                    return Ok(false);
                };
                let Ok(path) = SecretPath::parse(&d.path) else {
                    tracing::warn!(seq = v.seq, path = %d.path, "secret.rotated names a malformed path; skipped");
                    return Ok(false);
                };
                if next.secrets.get(&d.path).is_some_and(|have| *have >= d.version) {
                    return Ok(false);
                }
                let (value, version) = match self.session.secret_version(&d.path, Some(d.version)).await {
                    Ok(v) => v,
                    // Deleted since, or this site is no longer a reader: nothing to write, and
                    // retrying would wedge every event behind it.
                    Err(ClientError::Api(e)) if matches!(e.code, crate::error::ErrorCode::Forbidden | crate::error::ErrorCode::NotFound) => {
                        tracing::warn!(seq = v.seq, path = %d.path, "secret.rotated names a secret this site cannot read now ({}); skipped", e.message);
                        return Ok(false);
                    }
                    Err(e) => return Err(e.into()),
                };
                let file = secret_file(&self.opts.files, &path);
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                }
                write_atomic(&file, value.expose().as_bytes(), 0o600).map_err(io_err(&file))?;
                next.secrets.insert(d.path.clone(), version);
                tracing::info!(path = %d.path, version, "secret written");
                Ok(true)
            }
            "ca.rotated" => {
                let Ok(d) = serde_json::from_value::<CaRotated>(v.data.clone()) else {
                    tracing::warn!(seq = v.seq, "ca.rotated without a bundle; skipped");
                    return Ok(false);
                };
                if crate::client::tls::certs_from_pem(&d.bundle_pem).map(|c| c.is_empty()).unwrap_or(true) {
                    tracing::warn!(seq = v.seq, "ca.rotated bundle holds no certificate; skipped");
                    return Ok(false);
                }
                // The set of CAs, not their order: a switch of the issuing CA reorders the bundle,
                // which needs no rewrite and no server reload.
                let digest = bundle_set_digest(&d.bundle_pem);
                // The control plane asks for the site server's certificate from the current CA
                // before the old one leaves the bundle.
                let reissue = d.phase.as_deref() == Some("reissue") && v.seq >= next.ca_seq;
                if reissue {
                    // The agent's own certificate too: the old CA is about to leave the bundle.
                    self.session.renew_now().await?;
                }
                let reissued = reissue && self.renew_site_server().await?;
                if v.seq < next.ca_seq || next.ca_bundle_sha256.as_deref() == Some(digest.as_str()) {
                    next.ca_seq = next.ca_seq.max(v.seq);
                    return Ok(reissued);
                }
                let file = self.opts.files.join("ca.pem");
                write_atomic(&file, d.bundle_pem.as_bytes(), 0o600).map_err(io_err(&file))?;
                next.ca_bundle_sha256 = Some(digest);
                next.ca_seq = v.seq;
                tracing::info!("CA bundle written");
                Ok(true)
            }
            "trust.rotated" => {
                // Signed by a key we trust: adopt the new trust set for the next envelopes.
                if let Ok(d) = serde_json::from_value::<TrustRotated>(v.data.clone()) {
                    let text = d.trust_jwks.to_string();
                    if let Ok(set) = TrustSet::from_jwks(&text) {
                        if !set.is_empty() {
                            self.verifier = Verifier::new(set, vec![format!("site:{}", self.site)], 1);
                            let file = IdentityDir::new(&self.opts.identity).trust_jwks();
                            write_atomic(&file, text.as_bytes(), 0o644).map_err(io_err(&file))?;
                            tracing::info!("trust set updated");
                        }
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The site server's files in the directory this agent materialises into (`site add` wrote
    /// them there); `None` when it manages no site server.
    fn site_server_files(&self) -> Option<SiteServerFiles> {
        use crate::natsconf::site_files;
        let d = &self.opts.files;
        let f = SiteServerFiles { cert: d.join(site_files::CERT), key: d.join(site_files::KEY), sys_creds: d.join(site_files::SYS_CREDS), tillit_creds: d.join(site_files::TILLIT_CREDS) };
        [&f.cert, &f.key, &f.sys_creds, &f.tillit_creds].iter().all(|p| p.exists()).then_some(f)
    }

    /// Whether the site server's certificate should be re-issued now: a third of its life left,
    /// or its key and certificate do not match (a crash between the two writes).
    pub fn site_server_due(&self) -> Option<String> {
        let f = self.site_server_files()?;
        match (std::fs::read_to_string(&f.cert), std::fs::read_to_string(&f.key)) {
            (Ok(cert), Ok(key)) => server_cert_due(&cert, &key, self.clock.now_unix()),
            _ => Some("the site server's certificate or key cannot be read".into()),
        }
    }

    /// Re-issue the site server's certificate (a new key made here, never sent) and its leafnode
    /// users' JWTs (their seeds stay in the creds files); false when this agent manages no site
    /// server. The caller runs the hook so the server reloads them.
    pub async fn renew_site_server(&self) -> Result<bool, AgentError> {
        let Some(f) = self.site_server_files() else {
            tracing::debug!("no site server files beside the agent's; nothing to re-issue");
            return Ok(false);
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
        let bad = |what: &str, e: String| AgentError::SiteFiles(format!("{what}: {e}"));
        let (_, tillit_seed) = crate::issuer::creds::parse(&read(&f.tillit_creds)?).map_err(|e| bad("leaf-tillit.creds", e.to_string()))?;
        let (_, sys_seed) = crate::issuer::creds::parse(&read(&f.sys_creds)?).map_err(|e| bad("leaf-sys.creds", e.to_string()))?;
        let tillit_user = nkeys::KeyPair::from_seed(tillit_seed.expose()).map_err(|e| bad("leaf-tillit.creds seed", e.to_string()))?;
        let (csr, key_pem) = crate::issuer::x509::make_csr(&tillit_user.public_key()).map_err(|e| bad("CSR", e.to_string()))?;
        let r: crate::proto::SiteRenewReply =
            self.session.call::<crate::proto::SiteRenew>(crate::proto::SiteRenewRequest { csr }).await?;
        crate::pem::key_matches(&r.cert_pem, key_pem.expose()).map_err(|e| bad("the re-issued certificate", e.to_string()))?;
        // Key first, then certificate: a crash between leaves a mismatch that the next check
        // (`site_server_due`) repairs; the hook reloads the server only after both.
        write_atomic(&f.key, key_pem.expose().as_bytes(), 0o600).map_err(io_err(&f.key))?;
        write_atomic(&f.cert, r.cert_pem.as_bytes(), 0o644).map_err(io_err(&f.cert))?;
        for (path, jwt, seed) in [(&f.tillit_creds, &r.tillit_user_jwt, &tillit_seed), (&f.sys_creds, &r.sys_user_jwt, &sys_seed)] {
            write_atomic(path, crate::issuer::creds::format(jwt, seed).expose().as_bytes(), 0o600).map_err(io_err(path))?;
        }
        tracing::info!(site = %self.site, expires = %r.expires_at, ca = %r.ca_fingerprint, "site server certificate and leafnode users re-issued");
        Ok(true)
    }

    /// Check the site server's certificate; re-issue it and run the hook when due.
    async fn maintain_site_server(&self) {
        let Some(why) = self.site_server_due() else { return };
        tracing::info!(site = %self.site, "{why}: re-issuing");
        match self.renew_site_server().await {
            Ok(true) => {
                if let Some(cmd) = &self.opts.exec {
                    if let Err(why) = run_hook(cmd, &self.site, &self.opts.files).await {
                        tracing::error!(site = %self.site, "hook after re-issuing the site server's certificate failed: {why}");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(site = %self.site, "cannot re-issue the site server's certificate yet: {e}; trying again later"),
        }
    }

    /// Run the hook; on failure report it, keep the batch in progress, and retry with backoff.
    async fn run_hook_until_ok(&self, msgs: &[jetstream::Message], applied: &[(u64, String, String)]) -> Result<(), AgentError> {
        let Some(cmd) = &self.opts.exec else { return Ok(()) };
        let mut delay = Duration::from_millis(500);
        loop {
            let hook = run_hook(cmd, &self.site, &self.opts.files);
            tokio::pin!(hook);
            let result = loop {
                tokio::select! {
                    r = &mut hook => break r,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => keep_alive(msgs).await,
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(why) => {
                    tracing::error!(site = %self.site, "hook failed: {why}; retrying in {delay:?} (events stay unacknowledged)");
                    if let Err(e) = self.report(applied, "failed", Some(why)).await {
                        tracing::warn!("cannot report the failure: {e}");
                    }
                    keep_alive(msgs).await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    /// Acknowledge to the control plane with a signed envelope.
    async fn report(&self, batch: &[(u64, String, String)], outcome: &str, error: Option<String>) -> Result<AckReply, AgentError> {
        let info = self.session.identity();
        let data = AckData {
            site: self.site.clone(),
            outcome: outcome.into(),
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

/// Why a server certificate should be re-issued at `now` (pure): its key does not match it,
/// it cannot be read, or a third of its life is left.
pub fn server_cert_due(cert_pem: &str, key_pem: &str, now: i64) -> Option<String> {
    if crate::pem::key_matches(cert_pem, key_pem).is_err() {
        return Some("the site server's key does not match its certificate".into());
    }
    let validity = crate::issuer::x509::first_cert_der(cert_pem).ok().and_then(|der| {
        x509_parser::parse_x509_certificate(&der).ok().map(|(_, c)| (c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
    });
    let Some((from, to)) = validity else {
        return Some("the site server's certificate cannot be parsed".into());
    };
    (now >= to - (to - from) / 3).then(|| format!("the site server's certificate expires {}", crate::clock::rfc3339(to)))
}

/// The files of the site server an agent looks after.
struct SiteServerFiles {
    cert: PathBuf,
    key: PathBuf,
    sys_creds: PathBuf,
    tillit_creds: PathBuf,
}

/// How often an agent checks its site server's certificate.
const SITE_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Still working on a batch: keep its events from being delivered again meanwhile.
async fn keep_alive(msgs: &[jetstream::Message]) {
    for m in msgs {
        let _ = m.ack_with(jetstream::AckKind::Progress).await;
    }
}

/// A digest of the certificates in a PEM bundle, independent of their order.
fn bundle_set_digest(pem: &str) -> String {
    let mut ders: Vec<Vec<u8>> = crate::client::tls::certs_from_pem(pem).map(|c| c.iter().map(|d| d.to_vec()).collect()).unwrap_or_default();
    ders.sort();
    crate::crypto::sha256_hex(&ders.concat())
}

/// Run `cmd` with `sh -c`, bounded; an error says why.
async fn run_hook(cmd: &str, site: &str, files: &Path) -> Result<(), String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(cmd).env("TILLIT_SITE", site).env("TILLIT_FILES", files).kill_on_drop(true);
    let out = tokio::time::timeout(HOOK_TIMEOUT, c.output())
        .await
        .map_err(|_| format!("hook did not finish within {HOOK_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run hook: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("hook exited with {}: {}", out.status, err.trim().chars().take(300).collect::<String>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_certificate_is_due_with_a_third_of_its_life_left_or_a_foreign_key() {
        use crate::issuer::x509::CertAuthority;
        let t0 = 1_780_000_000;
        let ca = CertAuthority::generate("td", t0, t0 + 10 * 365 * 86_400).unwrap();
        let ca = CertAuthority::load(&ca.cert_pem, &ca.key_pem).unwrap();
        let year = 365 * 86_400;
        let leaf = ca.issue_server("site", &["site".into()], t0, t0 + year).unwrap();
        let other = ca.issue_server("site", &["site".into()], t0, t0 + year).unwrap();
        let (cert, key) = (leaf.cert_pem.as_str(), leaf.key_pem.expose());
        // notBefore is backdated a little; the third is measured on the certificate itself.
        let cases: &[(i64, bool)] = &[(t0, false), (t0 + year / 2, false), (t0 + year * 2 / 3 - 86_400, false), (t0 + year * 2 / 3 + 86_400, true), (t0 + year + 1, true)];
        for (now, due) in cases {
            assert_eq!(server_cert_due(cert, key, *now).is_some(), *due, "at +{}d", (now - t0) / 86_400);
        }
        let why = server_cert_due(cert, other.key_pem.expose(), t0).expect("a key that is not the certificate's");
        assert!(why.contains("does not match"), "{why}");
        assert!(server_cert_due("not a cert", key, t0).is_some());
    }

    #[test]
    fn subjects_name_scope_and_kind() {
        assert_eq!(subject_kind("tillit.v1.events.all.secret.rotated"), Some(("all", "secret.rotated")));
        assert_eq!(subject_kind("tillit.v1.events.east.ca.rotated"), Some(("east", "ca.rotated")));
        assert_eq!(subject_kind("tillit.v1.events.east"), None);
        assert_eq!(subject_kind("other.subject"), None);
    }

    fn signer() -> (crate::envelope::Signer, Verifier) {
        let kp = nkeys::KeyPair::new_account();
        let jwks = serde_json::json!({"keys": [crate::envelope::jwk(&kp.public_key(), "tillit://td", &kp.public_key(), "current").unwrap()]});
        let v = Verifier::new(TrustSet::from_jwks(&jwks.to_string()).unwrap(), vec!["site:east".into()], 1);
        (crate::envelope::Signer::new(&kp.public_key(), "tillit://td", std::sync::Arc::new(kp)), v)
    }

    #[test]
    fn decision_table() {
        let (s, v) = signer();
        let now = 1_780_000_000;
        let data = serde_json::json!({"path": "acme/shop/prod/db", "version": 2});
        let good = s.sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "site:east", 60, Some(7), &data, now).unwrap();
        let subj = "tillit.v1.events.east.secret.rotated";
        let st = AgentState { last_seq: 3, ..Default::default() };
        assert!(matches!(decide(&v, "east", &st, subj, 7, good.as_bytes(), now), Decision::Apply(_)));
        // The same envelope at another stream position: re-published, refused.
        assert!(matches!(decide(&v, "east", &st, subj, 9, good.as_bytes(), now), Decision::Reject(_)));
        // Already applied: skipped (not an error).
        let done = AgentState { last_seq: 7, ..Default::default() };
        assert!(matches!(decide(&v, "east", &done, subj, 7, good.as_bytes(), now), Decision::Skip));
        // Another site's subject, or an envelope for another audience.
        assert!(matches!(decide(&v, "east", &st, "tillit.v1.events.west.secret.rotated", 7, good.as_bytes(), now), Decision::Reject(_)));
        let west = s.sign("io.tillit.v1.secret.rotated", "x", "site:west", 60, Some(8), &data, now).unwrap();
        assert!(matches!(decide(&v, "east", &st, subj, 8, west.as_bytes(), now), Decision::Reject(_)));
        // Re-purposed: a secret.rotated envelope on the ca.rotated subject.
        assert!(matches!(decide(&v, "east", &st, "tillit.v1.events.east.ca.rotated", 7, good.as_bytes(), now), Decision::Reject(_)));
        // Forged: signed by a key outside the trust set.
        let (other, _) = signer();
        let forged = other.sign("io.tillit.v1.secret.rotated", "x", "site:east", 60, Some(7), &data, now).unwrap();
        assert!(matches!(decide(&v, "east", &st, subj, 7, forged.as_bytes(), now), Decision::Reject(_)));
        // Expired, and garbage.
        assert!(matches!(decide(&v, "east", &st, subj, 7, good.as_bytes(), now + 120), Decision::Reject(_)));
        assert!(matches!(decide(&v, "east", &st, subj, 7, b"\xff\x00", now), Decision::Reject(_)));
    }

    #[test]
    fn state_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(AgentState::load(dir.path()).unwrap(), AgentState::default());
        let mut st = AgentState { last_seq: 12, ..Default::default() };
        st.secrets.insert("a/b/c/d".into(), 3);
        st.save(dir.path()).unwrap();
        assert_eq!(AgentState::load(dir.path()).unwrap(), st);
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(AgentState::load(dir.path()), Err(AgentError::State { .. })));
    }

    #[tokio::test]
    async fn hooks_report_failure_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        run_hook("test \"$TILLIT_SITE\" = east", "east", dir.path()).await.unwrap();
        let err = run_hook("echo broken >&2; exit 3", "east", dir.path()).await.unwrap_err();
        assert!(err.contains("broken") && err.contains('3'), "{err}");
    }
}
