//! Idempotent requests: the reply to a changing request is kept, by signer and request id
//! (`jti`), until the request expires. A client that timed out (its reply was lost, or the
//! replica serving it died) sends the *same* signed request again and gets the first reply:
//! never a second effect, never `replayed` or `token_used` for its own request. The request's
//! bytes are part of the key's check (SHA-256), so only the very same request matches.
//!
//! One `serve` keeps replies in memory; replicas also keep them in the shared store
//! ([`Space::Replies`]) so a retry that lands on another replica finds them; the leader drops
//! expired ones.

use super::Ctx;
use crate::crypto;
use crate::store::{Batch, Space};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Most replies kept in memory (expired ones go first; past this, the oldest half).
const MAX_LOCAL: usize = 20_000;
/// How long a retry waits for the first attempt, still in flight, to answer.
pub(super) const IN_FLIGHT_WAIT: Duration = Duration::from_secs(15);

#[derive(Serialize, Deserialize)]
struct Kept {
    /// SHA-256 (hex) of the request's bytes.
    request: String,
    /// Unix time the request expires (and the reply with it).
    exp: i64,
    result: Box<RawValue>,
}

/// A kept reply in memory: when its request expires, the request's digest, the reply.
type Local = (i64, String, Box<RawValue>);

/// Replies kept in memory, and the requests being served here right now.
#[derive(Default)]
pub struct ReplyCache {
    local: Mutex<HashMap<String, Local>>,
    in_flight: Mutex<std::collections::HashSet<String>>,
}

/// A request being served here (its key leaves the in-flight set when this drops).
pub(super) struct Serving<'a> {
    cache: &'a ReplyCache,
    key: String,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.cache.in_flight.lock() {
            s.remove(&self.key);
        }
    }
}

impl ReplyCache {
    /// Mark `key` as being served here.
    pub(super) fn serving(&self, key: &str) -> Serving<'_> {
        if let Ok(mut s) = self.in_flight.lock() {
            s.insert(key.to_string());
        }
        Serving { cache: self, key: key.to_string() }
    }

    /// Whether `key` is being served here right now.
    pub(super) fn is_serving(&self, key: &str) -> bool {
        self.in_flight.lock().map(|s| s.contains(key)).unwrap_or(false)
    }
}

/// The cache key of a request.
pub(super) fn key(signer: &str, jti: &str) -> String {
    format!("{signer}/{jti}")
}

/// The request bytes' digest.
pub(super) fn digest(payload: &[u8]) -> String {
    crypto::sha256_hex(payload)
}

impl ReplyCache {
    fn get_local(&self, key: &str, request: &str) -> Option<Box<RawValue>> {
        let m = self.local.lock().ok()?;
        m.get(key).filter(|(_, r, _)| crypto::ct_eq(r.as_bytes(), request.as_bytes())).map(|(_, _, v)| v.clone())
    }

    fn put_local(&self, key: String, exp: i64, request: String, v: Box<RawValue>, now: i64) {
        let Ok(mut m) = self.local.lock() else { return };
        if m.len() >= MAX_LOCAL {
            m.retain(|_, (e, _, _)| *e > now);
            if m.len() >= MAX_LOCAL {
                let mut exps: Vec<i64> = m.values().map(|(e, _, _)| *e).collect();
                exps.sort_unstable();
                let cut = exps[exps.len() / 2];
                m.retain(|_, (e, _, _)| *e > cut);
            }
        }
        m.insert(key, (exp, request, v));
    }
}

/// The kept reply to this very request, if any.
pub(super) fn lookup(ctx: &Ctx, key: &str, request: &str) -> Option<Box<RawValue>> {
    if let Some(v) = ctx.replies.get_local(key, request) {
        return Some(v);
    }
    if !ctx.leader.replicated() {
        return None;
    }
    let kept: Kept = crate::store::get_json(ctx.estate.store(), Space::Replies, key).ok().flatten()?;
    crypto::ct_eq(kept.request.as_bytes(), request.as_bytes()).then_some(kept.result)
}

/// Wait (bounded) for the reply of a request another attempt is serving right now.
pub(super) async fn wait(ctx: &Ctx, key: &str, request: &str) -> Option<Box<RawValue>> {
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        if let Some(v) = lookup(ctx, key, request) {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Keep the reply to a changing request until it expires.
pub(super) fn keep(ctx: &std::sync::Arc<Ctx>, key: String, request: String, exp: i64, result: &RawValue) {
    let now = ctx.estate.clock().now_unix();
    ctx.replies.put_local(key.clone(), exp, request.clone(), result.to_owned(), now);
    if !ctx.leader.replicated() {
        return;
    }
    // Shared in the background: a retry comes after the client waited seconds, and the reply
    // need not wait for the bucket.
    let kept = Kept { request, exp, result: result.to_owned() };
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let mut b = Batch::new();
        let r = b.put_json(Space::Replies, &key, &kept).and_then(|b| c.estate.store().apply(std::mem::take(b)));
        if let Err(e) = r {
            tracing::warn!("cannot share a reply with the other replicas (a retry elsewhere would not find it): {e}");
        }
    });
}

/// Drop replies whose requests expired (the leader, every so often).
pub(super) async fn drop_expired(ctx: &std::sync::Arc<Ctx>) {
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let now = c.estate.clock().now_unix();
        let store = c.estate.store();
        let Ok(all) = store.scan(Space::Replies) else { return };
        let mut b = Batch::new();
        for (k, v) in all {
            let exp = serde_json::from_slice::<Kept>(&v).map(|k| k.exp).unwrap_or(0);
            if exp + 5 < now {
                b.delete(Space::Replies, k);
            }
            if b.ops.len() >= 256 {
                let _ = store.apply(std::mem::take(&mut b));
            }
        }
        if !b.is_empty() {
            let _ = store.apply(b);
        }
    })
    .await;
}
