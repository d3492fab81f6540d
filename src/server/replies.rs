//! Idempotent requests: the reply to a changing request is kept, by signer and request id
//! (`jti`), until the request expires. A client that timed out (its reply was lost, or the
//! replica serving it died) sends the *same* signed request again and gets the first reply:
//! never a second effect, never `replayed` or `token_used` for its own request. The request's
//! bytes are part of the key's check (SHA-256), so only the very same request matches.
//!
//! Replies are kept in memory up to [`MAX_LOCAL_BYTES`] (an enrollment's reply is ~5 KiB: the
//! budget, not the request rate, bounds the memory). Replicas also keep every reply in the
//! shared store ([`Space::Replies`]) so a retry that lands on another replica finds it; the
//! leader drops expired ones from there. A single `serve` appends the replies it has to drop
//! from memory before their requests expire to its spill files ([`super::spill`]), and at a
//! clean stop the ones memory still holds, for the next run.

use super::Ctx;
use crate::crypto;
use crate::store::{Batch, Space};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Bytes of replies kept in memory; past this the oldest go (to the store while their
/// requests have not expired).
const MAX_LOCAL_BYTES: usize = 8 << 20;
/// How long a retry waits for the first attempt, still in flight, to answer.
pub(super) const IN_FLIGHT_WAIT: Duration = Duration::from_secs(15);

/// A kept reply in the store: its expiry in the clear (for [`drop_expired`]), the rest sealed
/// with the master key. A reply may hold join tokens or credentials: whoever reads the data dir
/// (or the replicas' bucket) without the master key learns nothing from it.
#[derive(Serialize, Deserialize)]
struct Stored {
    exp: i64,
    /// [`Kept`] as JSON, sealed to `replies/<key>` (base64).
    sealed: String,
}

impl Stored {
    fn seal(ctx: &Ctx, key: &str, kept: &Kept) -> Result<Self, String> {
        Ok(Stored { exp: kept.exp, sealed: data_encoding::BASE64.encode(&kept.seal(ctx, key)?) })
    }

    fn open(&self, ctx: &Ctx, key: &str) -> Option<Kept> {
        Kept::open(ctx, key, &data_encoding::BASE64.decode(self.sealed.as_bytes()).ok()?)
    }
}

#[derive(Serialize, Deserialize)]
struct Kept {
    /// SHA-256 (hex) of the request's bytes.
    request: String,
    /// Unix time the request expires (and the reply with it).
    exp: i64,
    result: Box<RawValue>,
}

impl Kept {
    /// As JSON, sealed with the master key to `replies/<key>` (in the store or the spill files).
    fn seal(&self, ctx: &Ctx, key: &str) -> Result<Vec<u8>, String> {
        let json = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        ctx.estate.master_key().seal(&crate::store::aad(Space::Replies, key), &json).map_err(|e| e.to_string())
    }

    /// The reply [`Kept::seal`] sealed to `key`, if it opens.
    fn open(ctx: &Ctx, key: &str, sealed: &[u8]) -> Option<Kept> {
        let json = ctx.estate.master_key().open(&crate::store::aad(Space::Replies, key), sealed).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// A kept reply in memory: when its request expires, the request's digest, the reply.
type Local = (i64, String, Box<RawValue>);

/// Replies kept in memory, and the requests being served here right now.
#[derive(Default)]
pub struct ReplyCache {
    local: Mutex<LocalReplies>,
    in_flight: Mutex<std::collections::HashSet<String>>,
    /// Whether a reply was ever put in the store (a single `serve` looks there only then).
    spilled: std::sync::atomic::AtomicBool,
    /// A single `serve`'s spill files (replicas share replies through the store instead).
    spill: Option<super::spill::Spill>,
    /// Replies on their way to the spill files, and whether a task is writing them.
    spilling: Mutex<(Vec<(String, Kept)>, bool)>,
}

/// The replies in memory, their insertion order and their size.
#[derive(Default)]
struct LocalReplies {
    by_key: HashMap<String, Local>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
}

fn size_of(key: &str, l: &Local) -> usize {
    key.len() + l.1.len() + l.2.get().len() + 64
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
    /// The cache of a `serve` on `estate`: a single one spills to its data dir (or, if those
    /// files cannot be opened, to the store as replicas do).
    pub(super) fn open(estate: &crate::estate::Estate) -> Self {
        if !matches!(estate.config.store, crate::config::StoreBackend::Sled) {
            return Self::default();
        }
        match super::spill::Spill::open(estate.dir.reply_spill(), estate.clock().now_unix()) {
            Ok(spill) => {
                if spill.len() > 0 {
                    tracing::info!(replies = spill.len(), "kept replies of the previous run taken back");
                }
                ReplyCache { spill: Some(spill), ..Self::default() }
            }
            Err(e) => {
                tracing::warn!("cannot open the reply spill files in the data dir ({e}); replies memory cannot hold go to the store");
                Self::default()
            }
        }
    }

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
        m.by_key.get(key).filter(|(_, r, _)| crypto::ct_eq(r.as_bytes(), request.as_bytes())).map(|(_, _, v)| v.clone())
    }

    /// Keep a reply in memory within [`MAX_LOCAL_BYTES`], oldest out first; what had to go
    /// before its request expired is returned (to be kept in the store).
    fn put_local(&self, key: String, exp: i64, request: String, v: Box<RawValue>, now: i64) -> Vec<(String, Local)> {
        let Ok(mut m) = self.local.lock() else { return vec![] };
        let entry = (exp, request, v);
        m.bytes += size_of(&key, &entry);
        if let Some(old) = m.by_key.insert(key.clone(), entry) {
            m.bytes -= size_of(&key, &old);
        } else {
            m.order.push_back(key);
        }
        let mut evicted = Vec::new();
        while m.bytes > MAX_LOCAL_BYTES {
            let Some(k) = m.order.pop_front() else { break };
            if let Some(l) = m.by_key.remove(&k) {
                m.bytes -= size_of(&k, &l);
                if l.0 > now {
                    evicted.push((k, l));
                }
            }
        }
        evicted
    }

    /// Bytes of replies held in memory.
    #[cfg(test)]
    fn local_bytes(&self) -> usize {
        self.local.lock().map(|m| m.bytes).unwrap_or(0)
    }
}

/// The kept reply to this very request, if any.
pub(super) fn lookup(ctx: &Ctx, key: &str, request: &str) -> Option<Box<RawValue>> {
    if let Some(v) = ctx.replies.get_local(key, request) {
        return Some(v);
    }
    // On its way to the spill files.
    if let Some(v) = ctx.replies.spilling.lock().ok().and_then(|q| {
        q.0.iter().find(|(k, kept)| k == key && crypto::ct_eq(kept.request.as_bytes(), request.as_bytes())).map(|(_, kept)| kept.result.clone())
    }) {
        return Some(v);
    }
    // Out of memory: a single `serve`'s spill files, or the store (replicas, or a single one
    // whose spill files could not be opened).
    let kept = match &ctx.replies.spill {
        Some(spill) => Kept::open(ctx, key, &spill.get(key, ctx.estate.clock().now_unix())?)?,
        None => {
            if !ctx.leader.replicated() && !ctx.replies.spilled.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let stored: Stored = crate::store::get_json(ctx.estate.store(), Space::Replies, key).ok().flatten()?;
            stored.open(ctx, key)?
        }
    };
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
    let evicted = ctx.replies.put_local(key.clone(), exp, request.clone(), result.to_owned(), now);
    let to_store: Vec<(String, Kept)> = if ctx.leader.replicated() {
        // Every reply, for a retry that lands on another replica.
        vec![(key, Kept { request, exp, result: result.to_owned() })]
    } else {
        // Only what memory could not hold until its request expires.
        evicted.into_iter().map(|(k, (exp, request, result))| (k, Kept { request, exp, result })).collect()
    };
    if to_store.is_empty() {
        return;
    }
    if ctx.replies.spill.is_some() {
        // Queued for the one task that writes them: under load it takes many with one write.
        let start = match ctx.replies.spilling.lock() {
            Ok(mut q) => {
                q.0.extend(to_store);
                !std::mem::replace(&mut q.1, true)
            }
            Err(_) => false,
        };
        if start {
            let c = ctx.clone();
            tokio::task::spawn_blocking(move || spill_queued(&c));
        }
        return;
    }
    ctx.replies.spilled.store(true, std::sync::atomic::Ordering::Relaxed);
    // In the background: a retry comes after the client waited seconds, and the reply need not
    // wait for the store.
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let mut b = Batch::new();
        let r = to_store.iter().try_for_each(|(k, kept)| {
            let stored = Stored::seal(&c, k, kept)?;
            b.put_json(Space::Replies, k, &stored).map(|_| ()).map_err(|e| e.to_string())
        });
        let r = r.and_then(|_| c.estate.store().apply(b).map_err(|e| e.to_string()));
        if let Err(e) = r {
            tracing::warn!("cannot keep a reply in the store (a retry that memory no longer holds would not find it): {e}");
        }
    });
}

/// Write what is queued for the spill files until the queue is empty.
fn spill_queued(ctx: &Ctx) {
    loop {
        let replies = match ctx.replies.spilling.lock() {
            Ok(mut q) if q.0.is_empty() => {
                q.1 = false;
                return;
            }
            Ok(mut q) => std::mem::take(&mut q.0),
            Err(_) => return,
        };
        to_spill(ctx, replies, ctx.estate.clock().now_unix());
    }
}

/// Append sealed replies to the spill files.
fn to_spill(ctx: &Ctx, replies: Vec<(String, Kept)>, now: i64) {
    let Some(spill) = &ctx.replies.spill else { return };
    let mut sealed = Vec::with_capacity(replies.len());
    for (k, kept) in &replies {
        match kept.seal(ctx, k) {
            Ok(s) => sealed.push((k.as_str(), kept.exp, s)),
            Err(e) => tracing::warn!("cannot seal a kept reply (a retry that memory no longer holds would not find it): {e}"),
        }
    }
    let all: Vec<(&str, i64, &[u8])> = sealed.iter().map(|(k, exp, s)| (*k, *exp, s.as_slice())).collect();
    if let Err(e) = spill.put_all(&all, now) {
        tracing::warn!("cannot spill {} kept replies to the data dir (a retry that memory no longer holds would not find them): {e}", all.len());
    }
}

/// At a clean stop: the replies memory holds, whose requests have not expired, go to the spill
/// files for the next run (with the request ids it takes back, a request sent again across the
/// restart gets its first reply).
pub(super) fn spill_all(ctx: &Ctx) {
    if ctx.replies.spill.is_none() {
        return;
    }
    let now = ctx.estate.clock().now_unix();
    let mut held: Vec<(String, Kept)> = match ctx.replies.local.lock() {
        Ok(mut m) => {
            m.order.clear();
            m.bytes = 0;
            m.by_key.drain().filter(|(_, l)| l.0 > now).map(|(k, (exp, request, result))| (k, Kept { request, exp, result })).collect()
        }
        Err(_) => return,
    };
    if let Ok(mut q) = ctx.replies.spilling.lock() {
        held.extend(std::mem::take(&mut q.0));
    }
    let n = held.len();
    to_spill(ctx, held, now);
    if n > 0 {
        tracing::info!(replies = n, "kept replies saved for the next run");
    }
}

/// Drop replies whose requests expired (the leader, every so often).
pub(super) async fn drop_expired(ctx: &std::sync::Arc<Ctx>) {
    if let Some(spill) = &ctx.replies.spill {
        spill.drop_expired(ctx.estate.clock().now_unix());
    }
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let now = c.estate.clock().now_unix();
        let store = c.estate.store();
        // A streaming pass that holds the expired keys only (kept replies are ~5 KiB each: a
        // busy estate keeps thousands).
        let mut expired = vec![];
        let visited = store.visit_prefix(Space::Replies, "", &mut |k, v| {
            let exp = serde_json::from_slice::<Stored>(v).map(|k| k.exp).unwrap_or(0);
            if exp + 5 < now {
                expired.push(k.to_string());
            }
            true
        });
        if let Err(e) = visited {
            tracing::warn!("cannot read the kept replies: {e}");
        }
        for chunk in expired.chunks(256) {
            let mut b = Batch::new();
            for k in chunk {
                b.delete(Space::Replies, k.clone());
            }
            let _ = store.apply(b);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(n: usize) -> Box<RawValue> {
        RawValue::from_string(format!("\"{}\"", "x".repeat(n))).unwrap()
    }

    /// Memory holds replies within its byte budget whatever the request rate; the oldest go
    /// first, and those whose requests have not expired are handed back for the store.
    #[test]
    fn replies_in_memory_stay_within_the_byte_budget_and_unexpired_ones_spill() {
        let c = ReplyCache::default();
        let mut spilled = 0;
        let n = 2 * MAX_LOCAL_BYTES / 5000;
        for i in 0..n {
            // Half of them expired already (exp 50 < now 100).
            let exp = if i % 2 == 0 { 50 } else { 200 };
            spilled += c.put_local(format!("k{i}"), exp, "d".repeat(64), raw(5000), 100).len();
            assert!(c.local_bytes() <= MAX_LOCAL_BYTES, "{} bytes after {i}", c.local_bytes());
        }
        assert!(c.get_local(&format!("k{}", n - 1), &"d".repeat(64)).is_some(), "the newest is held");
        assert!(c.get_local("k1", &"d".repeat(64)).is_none(), "the oldest went");
        assert!(c.get_local(&format!("k{}", n - 1), "other digest").is_none(), "only the very same request matches");
        // About half the dropped ones were unexpired: those are handed back.
        assert!(spilled > n / 5 && spilled < n / 2 + 1, "{spilled} of {n}");
    }
}
