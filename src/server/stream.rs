//! The event stream: every change other parties act on is published as a signed envelope into
//! the JetStream stream `TILLIT_EVENTS` (`tillit.v1.events.<site|all>.<kind>`), created by `serve`.
//! Each envelope carries the stream sequence it lands at (`seq`), enforced with
//! `Nats-Expected-Last-Sequence`, so readers see gaps and reordering.

use crate::envelope::{Signer, AUD_ALL};
use crate::subjects::{self, EventKind};
use async_nats::jetstream;
use serde::Serialize;
use tokio::sync::Mutex;

/// How long events are kept.
pub const EVENTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// How long an agent has to apply and acknowledge an event before it is delivered again.
pub const AGENT_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a notification stays valid.
pub const NOTIFY_TTL_SECS: i64 = 60;
/// How long an event envelope stays valid (agents offline longer re-sync from state).
pub const EVENT_TTL_SECS: i64 = 30 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// Where a restored estate keeps the sequence its new event stream starts at (`meta`): after
/// every sequence its agents may have applied, so none of them takes a new event for an old one.
pub const EVENTS_FIRST_SEQ: &str = "events_first_seq";

/// Publishes signed events in order.
pub struct Events {
    js: jetstream::Context,
    signer: std::sync::RwLock<std::sync::Arc<Signer>>,
    last_seq: Mutex<u64>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// Bytes a site's stream may hold (reserved out of the hub's JetStream storage).
pub const SITE_STREAM_MAX_BYTES: i64 = 64 << 20;

impl Events {
    /// Create (or find) the stream (`replicas` copies: as the store's, so a clustered hub keeps
    /// its events when a node dies) and learn where it is.
    /// A stream made here (none was found: a new or restored estate) starts at `first_seq`.
    pub async fn start(client: async_nats::Client, signer: Signer, replicas: usize, first_seq: Option<u64>) -> Result<Self, StreamError> {
        let js = jetstream::new(client);
        let mut stream = js
            .get_or_create_stream(jetstream::stream::Config {
                first_sequence: first_seq.filter(|s| *s > 1),
                name: subjects::EVENTS_STREAM.into(),
                subjects: vec![subjects::EVENTS_EXPORT.into()],
                storage: jetstream::stream::StorageType::File,
                max_age: EVENTS_MAX_AGE,
                max_bytes: 1 << 30,
                duplicate_window: std::time::Duration::from_secs(120),
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| StreamError::JetStream(e.to_string()))?;
        let last = stream.info().await.map_err(|e| StreamError::JetStream(e.to_string()))?.state.last_sequence;
        Ok(Events { js, signer: std::sync::RwLock::new(std::sync::Arc::new(signer)), last_seq: Mutex::new(last) })
    }

    /// The sequence of the last event published (or found at start).
    pub async fn last_seq(&self) -> u64 {
        *self.last_seq.lock().await
    }

    /// A site's stream (`TILLIT_SITE_<site>`): the hub's JetStream copies into it, from the
    /// start of `TILLIT_EVENTS`, the events for all sites and for this one. It has no subjects
    /// of its own, so nothing but the hub's sourcing writes to it.
    pub async fn ensure_site_stream(&self, site: &str) -> Result<(), StreamError> {
        let sources = subjects::site_filters(site)
            .into_iter()
            .map(|f| jetstream::stream::Source {
                name: subjects::EVENTS_STREAM.into(),
                filter_subject: Some(f),
                ..Default::default()
            })
            .collect();
        self.js
            .get_or_create_stream(jetstream::stream::Config {
                name: subjects::site_stream(site),
                description: Some(format!("events for site {site}, sourced from {}", subjects::EVENTS_STREAM)),
                subjects: vec![],
                sources: Some(sources),
                storage: jetstream::stream::StorageType::File,
                max_age: EVENTS_MAX_AGE,
                // nats-server reserves a stream's max_bytes out of the hub's max_file_store: at
                // 256 MiB a hub with default limits held two sites. A site's events are signed
                // envelopes of ~1-2 KiB, dropped after EVENTS_MAX_AGE: 64 MiB holds tens of
                // thousands.
                max_bytes: SITE_STREAM_MAX_BYTES,
                ..Default::default()
            })
            .await
            .map_err(|e| StreamError::JetStream(e.to_string()))?;
        Ok(())
    }

    /// Delete a site's stream (the site was removed); a missing one is fine.
    pub async fn delete_site_stream(&self, site: &str) -> Result<(), StreamError> {
        match self.js.delete_stream(subjects::site_stream(site)).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(StreamError::JetStream(e.to_string())),
        }
    }

    /// The durable pull consumer of one site agent, on its site's stream (created once; an
    /// existing one is kept).
    pub async fn ensure_agent_consumer(&self, name: &str, site: &str) -> Result<(), StreamError> {
        self.ensure_site_stream(site).await?;
        self.ensure_consumer_on_site_stream(name, site).await
    }

    /// [`Self::ensure_agent_consumer`] on a site stream known to exist.
    ///
    /// The consumer keeps its position in the hub's memory, not in a file: with file state,
    /// nats-server rewrites a file (temp file, rename) per consumer after each delivery and each
    /// acknowledgement, which was a third of the hub's CPU when 5,000 agents applied a rotation.
    /// The agent's state file is what says which events it applied; the consumer only says where
    /// to read next. A hub restart drops the consumer: the control plane's job
    /// `heal-agent-consumers` makes it again, and the agent re-reads its site's stream from the
    /// start, skipping what it applied. Consumers made by earlier releases keep their files.
    pub async fn ensure_consumer_on_site_stream(&self, name: &str, site: &str) -> Result<(), StreamError> {
        let stream = self.site_stream(site).await?;
        stream
            .get_or_create_consumer(
                name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    description: Some(format!("site {site} agent")),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_wait: AGENT_ACK_WAIT,
                    max_ack_pending: 1_000,
                    memory_storage: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| StreamError::JetStream(e.to_string()))?;
        Ok(())
    }

    /// A site's stream on the hub.
    async fn site_stream(&self, site: &str) -> Result<jetstream::stream::Stream, StreamError> {
        self.js.get_stream(subjects::site_stream(site)).await.map_err(|e| StreamError::JetStream(e.to_string()))
    }

    /// How many consumers a site's stream has.
    pub async fn consumer_count(&self, site: &str) -> Result<usize, StreamError> {
        let stream = self.site_stream(site).await?;
        Ok(stream.cached_info().state.consumer_count)
    }

    /// The names of the consumers on a site's stream.
    pub async fn consumer_names(&self, site: &str) -> Result<std::collections::HashSet<String>, StreamError> {
        use futures::TryStreamExt;
        let stream = self.site_stream(site).await?;
        stream.consumer_names().try_collect().await.map_err(|e| StreamError::JetStream(e.to_string()))
    }

    /// Delete an agent's consumer (its site was removed); a missing one is fine.
    pub async fn delete_consumer(&self, site: &str, name: &str) -> Result<(), StreamError> {
        let stream = match self.js.get_stream(subjects::site_stream(site)).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("not found") => return Ok(()),
            Err(e) => return Err(StreamError::JetStream(e.to_string())),
        };
        match stream.delete_consumer(name).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(StreamError::JetStream(e.to_string())),
        }
    }

    /// How many of a consumer's events are not yet acknowledged (pending + in flight).
    pub async fn consumer_lag(&self, site: &str, name: &str) -> Result<u64, StreamError> {
        let mut c: jetstream::consumer::PullConsumer = self
            .js
            .get_consumer_from_stream(name, subjects::site_stream(site))
            .await
            .map_err(|e| StreamError::JetStream(e.to_string()))?;
        let info = c.info().await.map_err(|e| StreamError::JetStream(e.to_string()))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Sign an event without storing it (a notification sent straight to its audience).
    pub fn sign_only<D: Serialize>(&self, kind: EventKind, subject: &str, aud: &str, data: D, now: i64) -> Result<String, StreamError> {
        let signer = self.signer.read().map(|s| s.clone()).map_err(|_| StreamError::Sign("signer lock".into()))?;
        signer.sign(&kind.envelope_type(), subject, aud, NOTIFY_TTL_SECS, None, data, now).map_err(|e| StreamError::Sign(e.to_string()))
    }

    /// Sign with another key from now on (after a signing-key rotation).
    pub fn set_signer(&self, signer: Signer) {
        if let Ok(mut s) = self.signer.write() {
            *s = std::sync::Arc::new(signer);
        }
    }

    /// Sign and store one event of `kind` (e.g. `secret.rotated`) for `site` (or all sites).
    /// The stream is the truth for the next sequence: if something else wrote to it (or a
    /// publish was lost), the expected sequence is re-read and the event signed again.
    pub async fn publish<D: Serialize>(&self, kind: EventKind, site: Option<&str>, subject: &str, data: D, now: i64) -> Result<u64, StreamError> {
        let scope = site.unwrap_or("all");
        let aud = site.map(|s| format!("site:{s}")).unwrap_or_else(|| AUD_ALL.to_string());
        let mut last = self.last_seq.lock().await;
        let signer = self.signer.read().map(|s| s.clone()).map_err(|_| StreamError::Sign("signer lock".into()))?;
        let data = serde_json::to_value(data).map_err(|e| StreamError::Sign(e.to_string()))?;
        let mut attempt = 0;
        loop {
            let seq = *last + 1;
            let token = signer
                .sign(&kind.envelope_type(), subject, &aud, EVENT_TTL_SECS, Some(seq), &data, now)
                .map_err(|e| StreamError::Sign(e.to_string()))?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
            let r = match self.js.publish_with_headers(subjects::event_subject(scope, kind.name()), headers, token.into()).await {
                Ok(f) => f.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(ack) => {
                    *last = ack.sequence;
                    return Ok(ack.sequence);
                }
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    let mut stream = self.js.get_stream(subjects::EVENTS_STREAM).await.map_err(|e| StreamError::JetStream(e.to_string()))?;
                    let actual = stream.info().await.map_err(|e| StreamError::JetStream(e.to_string()))?.state.last_sequence;
                    tracing::warn!(expected = *last, actual, "event stream moved under us ({e}); re-signing at its sequence");
                    *last = actual;
                }
                Err(e) => return Err(StreamError::JetStream(e)),
            }
        }
    }
}
