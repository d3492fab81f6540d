//! The control plane as a NATS micro service (ADR-32): `$SRV.PING|INFO|STATS` (all services,
//! `tillit`, `tillit.<id>`) answered here, and every endpoint a queue subscription whose
//! requests, errors and processing time are counted here.
//!
//! async-nats' own service module (0.51) sends no `metadata` in its STATS reply, which NATS micro
//! clients expect (`io.nats.micro.v1.stats_response` has it at the top level), and counts an error
//! only when the reply is empty; so tillit speaks the protocol itself. All three replies carry the
//! same `metadata`: the trust domain and the API version prefix. `tests/it/schemas.rs` validates
//! them against the micro schemas.

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The queue group every endpoint subscribes in (the micro default).
pub(super) const QUEUE_GROUP: &str = "q";
/// The micro protocol's subject prefix.
const SRV: &str = "$SRV";

/// One endpoint's counters.
#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    last_error: String,
    processing: Duration,
}

#[derive(Debug)]
struct EndpointState {
    name: String,
    subject: String,
    counters: Counters,
}

/// What the service says about itself.
#[derive(Debug)]
struct Inner {
    name: String,
    id: String,
    version: String,
    description: String,
    metadata: BTreeMap<String, String>,
    started: String,
    endpoints: Mutex<Vec<EndpointState>>,
}

/// A running micro service: its verbs answered until [`Service::stop`].
#[derive(Debug)]
pub(super) struct Service {
    inner: Arc<Inner>,
    client: async_nats::Client,
    verbs: tokio::task::JoinHandle<()>,
}

/// Describes a service to start.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub metadata: BTreeMap<String, String>,
    /// When it started (RFC 3339, from the injected clock).
    pub started: String,
}

/// What every micro reply starts with (the whole PING reply).
#[derive(Serialize)]
struct Ping<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Info<'a> {
    #[serde(flatten)]
    head: Ping<'a>,
    description: &'a str,
    endpoints: Vec<EndpointInfo>,
}

#[derive(Serialize)]
struct EndpointInfo {
    name: String,
    subject: String,
    queue_group: &'static str,
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Stats<'a> {
    #[serde(flatten)]
    head: Ping<'a>,
    started: &'a str,
    endpoints: Vec<EndpointStats>,
}

#[derive(Serialize)]
struct EndpointStats {
    name: String,
    subject: String,
    queue_group: &'static str,
    num_requests: u64,
    num_errors: u64,
    last_error: String,
    /// Nanoseconds.
    processing_time: u128,
    /// Nanoseconds.
    average_processing_time: u128,
}

impl Inner {
    /// The reply to a verb (`PING`, `INFO`, `STATS`).
    fn answer(&self, verb: &str) -> Option<Vec<u8>> {
        let head = |kind| Ping { kind, name: &self.name, id: &self.id, version: &self.version, metadata: &self.metadata };
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let json = match verb {
            "PING" => serde_json::to_vec(&head("io.nats.micro.v1.ping_response")),
            "INFO" => serde_json::to_vec(&Info {
                head: head("io.nats.micro.v1.info_response"),
                description: &self.description,
                endpoints: endpoints
                    .iter()
                    .map(|e| EndpointInfo { name: e.name.clone(), subject: e.subject.clone(), queue_group: QUEUE_GROUP, metadata: BTreeMap::new() })
                    .collect(),
            }),
            "STATS" => serde_json::to_vec(&Stats {
                head: head("io.nats.micro.v1.stats_response"),
                started: &self.started,
                endpoints: endpoints.iter().map(endpoint_stats).collect(),
            }),
            _ => return None,
        };
        json.ok()
    }
}

fn endpoint_stats(e: &EndpointState) -> EndpointStats {
    let c = &e.counters;
    let total = c.processing.as_nanos();
    EndpointStats {
        name: e.name.clone(),
        subject: e.subject.clone(),
        queue_group: QUEUE_GROUP,
        num_requests: c.requests,
        num_errors: c.errors,
        last_error: c.last_error.clone(),
        processing_time: total,
        average_processing_time: if c.requests == 0 { 0 } else { total / u128::from(c.requests) },
    }
}

/// An endpoint's name in INFO and STATS: its subject below `tillit.v1.`, dots as dashes
/// (`admin-status`, `svc-secret-get`): unique, and in the micro name alphabet.
pub(super) fn endpoint_name(subject: &str) -> String {
    let rest = subject.strip_prefix(crate::subjects::API_PREFIX).map(|r| r.trim_start_matches('.')).unwrap_or(subject);
    rest.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect()
}

impl Service {
    /// Subscribe the verbs and answer them.
    pub(super) async fn start(client: &async_nats::Client, config: Config) -> Result<Self, async_nats::SubscribeError> {
        let inner = Arc::new(Inner {
            name: config.name.to_string(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            version: config.version.to_string(),
            description: config.description.to_string(),
            metadata: config.metadata,
            started: config.started,
            endpoints: Mutex::new(Vec::new()),
        });
        let mut subs = Vec::new();
        for verb in ["PING", "INFO", "STATS"] {
            for subject in [format!("{SRV}.{verb}"), format!("{SRV}.{verb}.{}", inner.name), format!("{SRV}.{verb}.{}.{}", inner.name, inner.id)] {
                subs.push(client.subscribe(subject).await?);
            }
        }
        let mut verbs = futures::stream::select_all(subs);
        let (task_inner, task_client) = (inner.clone(), client.clone());
        let verbs = tokio::spawn(async move {
            while let Some(m) = verbs.next().await {
                let Some(reply) = m.reply else { continue };
                let verb = m.subject.as_str().split('.').nth(1).unwrap_or_default();
                if let Some(body) = task_inner.answer(verb) {
                    if let Err(e) = task_client.publish(reply, body.into()).await {
                        tracing::debug!("micro {verb} reply: {e}");
                    }
                }
            }
        });
        Ok(Service { inner, client: client.clone(), verbs })
    }

    /// Add an endpoint on `subject` (a queue subscription in [`QUEUE_GROUP`]).
    pub(super) async fn endpoint(&self, subject: &str) -> Result<Endpoint, async_nats::SubscribeError> {
        let sub = self.client.queue_subscribe(subject.to_string(), QUEUE_GROUP.to_string()).await?;
        let index = {
            let mut eps = self.inner.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            eps.push(EndpointState { name: endpoint_name(subject), subject: subject.to_string(), counters: Counters::default() });
            eps.len() - 1
        };
        Ok(Endpoint { sub, index, inner: self.inner.clone(), client: self.client.clone() })
    }

    /// Stop answering the verbs (endpoints stop when their [`Endpoint`]s are dropped).
    pub(super) fn stop(self) {
        self.verbs.abort();
    }
}

/// One endpoint's requests.
#[derive(Debug)]
pub(super) struct Endpoint {
    sub: async_nats::Subscriber,
    index: usize,
    inner: Arc<Inner>,
    client: async_nats::Client,
}

impl Endpoint {
    /// The next request, `None` once the subscription ends.
    pub(super) async fn next(&mut self) -> Option<Request> {
        let message = self.sub.next().await?;
        Some(Request { message, issued: Instant::now(), index: self.index, inner: self.inner.clone(), client: self.client.clone() })
    }
}

/// A request to an endpoint; answering it counts it.
#[derive(Debug)]
pub(super) struct Request {
    pub message: async_nats::Message,
    issued: Instant,
    index: usize,
    inner: Arc<Inner>,
    client: async_nats::Client,
}

impl Request {
    /// Reply with `body` and `headers`; `error` (`"<status>:<message>"`) counts it as an error.
    pub(super) async fn respond(&self, body: Bytes, headers: async_nats::HeaderMap, error: Option<String>) -> Result<(), async_nats::PublishError> {
        let result = match self.message.reply.clone() {
            Some(reply) => self.client.publish_with_headers(reply, headers, body).await,
            None => Ok(()),
        };
        let elapsed = self.issued.elapsed();
        let mut eps = self.inner.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = eps.get_mut(self.index) {
            e.counters.requests += 1;
            e.counters.processing += elapsed;
            if let Some(err) = error {
                e.counters.errors += 1;
                e.counters.last_error = err;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        Inner {
            name: "tillit".into(),
            id: "ID1".into(),
            version: "1.2.3".into(),
            description: "d".into(),
            metadata: [("trust_domain".to_string(), "example.org".to_string())].into(),
            started: "2026-01-01T00:00:00Z".into(),
            endpoints: Mutex::new(vec![EndpointState {
                name: endpoint_name("tillit.v1.admin.status"),
                subject: "tillit.v1.admin.status".into(),
                counters: Counters { requests: 4, errors: 1, last_error: "403:no".into(), processing: Duration::from_nanos(400) },
            }]),
        }
    }

    #[test]
    fn every_verb_carries_metadata_and_stats_count() {
        let i = inner();
        for verb in ["PING", "INFO", "STATS"] {
            let v: serde_json::Value = serde_json::from_slice(&i.answer(verb).unwrap()).unwrap();
            assert_eq!(v["type"], format!("io.nats.micro.v1.{}_response", verb.to_lowercase()));
            assert_eq!(v["metadata"]["trust_domain"], "example.org", "{verb}");
            assert_eq!((v["name"].as_str(), v["id"].as_str(), v["version"].as_str()), (Some("tillit"), Some("ID1"), Some("1.2.3")));
        }
        let s: serde_json::Value = serde_json::from_slice(&i.answer("STATS").unwrap()).unwrap();
        assert_eq!(s["started"], "2026-01-01T00:00:00Z");
        let e = &s["endpoints"][0];
        assert_eq!((e["name"].as_str(), e["num_requests"].as_u64(), e["num_errors"].as_u64()), (Some("admin-status"), Some(4), Some(1)));
        assert_eq!((e["processing_time"].as_u64(), e["average_processing_time"].as_u64()), (Some(400), Some(100)));
        assert_eq!(e["last_error"], "403:no");
        assert!(i.answer("NOPE").is_none());
        assert_eq!(endpoint_name("tillit.v1.svc.secret.get"), "svc-secret-get");
    }
}
