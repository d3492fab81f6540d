//! The [`Store`] on a JetStream KV bucket, for control planes that run as several replicas.
//!
//! Every record is one key of the bucket, `<space>.<base64url(key)>` (KV keys allow only
//! `[-/_=.a-zA-Z0-9]`; the base64url alphabet is inside it, so any record key maps to a valid KV
//! key and back). Values are stored as the estate hands them over: sealed values stay sealed
//! ([`super::Vault`]), so the bucket never holds a clear key or secret.
//!
//! **Reads** come from a local mirror of the bucket, loaded at open and kept current by a watch,
//! so a read costs no round trip; a replica sees another's writes as soon as the watch delivers
//! them, and its own at once (read-your-writes).
//!
//! **Writes** are compare-and-set on the record's revision as this replica last saw it
//! (`Nats-Expected-Last-Subject-Sequence`): a put of a record another replica changed meanwhile is
//! refused with [`StoreError::Conflict`], never silently lost. A batch's writes are applied in
//! order, each acknowledged by JetStream (durable when acknowledged, so [`Store::sync`] has
//! nothing left to do); a batch is not atomic across records: the audit journal, which records a
//! change before it is applied and replays it after a crash, makes multi-record changes whole.
//!
//! The store drives its NATS connection on a runtime thread of its own, so its synchronous
//! [`Store`] methods can be called from anywhere (async handlers, blocking tasks, the CLI).

use super::{Batch, Snapshot, Space, Store, StoreError};
use data_encoding::BASE64URL_NOPAD;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long one write may wait for JetStream's acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the watch is checked against the bucket's last revision.
const WATCH_PROBE: Duration = Duration::from_secs(1);
/// How long opening may take (connect, create or bind the bucket, load the mirror).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A record as this replica last saw it: its revision in the bucket and its value (`None`: deleted).
#[derive(Debug, Clone)]
struct Seen {
    revision: u64,
    value: Option<Vec<u8>>,
}

/// The local mirror: `(space, record key)` → what the bucket holds, in key order.
type Mirror = BTreeMap<(&'static str, String), Seen>;

/// One write to the bucket, with the revision it expects (`None`: the key must not exist).
struct Write {
    kv_key: String,
    value: Option<Vec<u8>>,
    expect: Option<u64>,
}

/// What the runtime thread is asked to do.
enum Cmd {
    Write(Vec<Write>, std::sync::mpsc::Sender<Result<(), StoreError>>),
    /// Read one key from the bucket itself.
    Get(String, std::sync::mpsc::Sender<Result<(), StoreError>>),
}

/// Connects to NATS (on the store's own runtime).
pub type Connect = Box<dyn FnOnce() -> BoxFuture<'static, Result<async_nats::Client, String>> + Send>;

/// The [`Store`] on a JetStream KV bucket.
pub struct JetStreamStore {
    bucket: String,
    mirror: Arc<RwLock<Mirror>>,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    client: async_nats::Client,
    /// Records the watch brought from other replicas (or this one's older self).
    foreign: Arc<AtomicU64>,
    /// Compare-and-set writes refused because another replica wrote first.
    conflicts: AtomicU64,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// The KV key of a record.
pub(crate) fn kv_key(space: Space, key: &str) -> String {
    // `=` is outside the base64url alphabet: it stands for the empty key, which encodes to nothing.
    let enc = if key.is_empty() { "=".to_string() } else { BASE64URL_NOPAD.encode(key.as_bytes()) };
    format!("{}.{enc}", space.as_str())
}

/// The record a KV key names (`None`: not one of ours).
pub(crate) fn record_key(kv_key: &str) -> Option<(Space, String)> {
    let (space, enc) = kv_key.split_once('.')?;
    let space = Space::named(space)?;
    if enc == "=" {
        return Some((space, String::new()));
    }
    let raw = BASE64URL_NOPAD.decode(enc.as_bytes()).ok()?;
    Some((space, String::from_utf8(raw).ok()?))
}

fn backend(what: &str) -> impl FnOnce(String) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

impl JetStreamStore {
    /// Open (creating it if missing) the bucket `bucket` with `replicas` copies, through the
    /// connection `connect` makes, and load the mirror.
    pub fn open(connect: Connect, bucket: &str, replicas: usize) -> Result<Self, StoreError> {
        let mirror: Arc<RwLock<Mirror>> = Arc::default();
        let foreign: Arc<AtomicU64> = Arc::default();
        let (cmds, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<async_nats::Client, StoreError>>();
        let (m, name, f) = (mirror.clone(), bucket.to_string(), foreign.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("store runtime: {e}")))?;
        std::thread::Builder::new()
            .name(format!("store-{bucket}"))
            .spawn(move || rt.block_on(run(connect, name, replicas, m, f, rx, ready_tx)))
            .map_err(|e| StoreError::Backend(format!("store thread: {e}")))?;
        match ready_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(client)) => {
                Ok(JetStreamStore { bucket: bucket.to_string(), mirror, cmds, client, foreign, conflicts: AtomicU64::new(0) })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Backend(format!("the KV bucket {bucket} did not open within {OPEN_TIMEOUT:?}; is JetStream enabled and reachable?"))),
        }
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Mirror>, StoreError> {
        self.mirror.read().map_err(|_| StoreError::Backend("store mirror lock poisoned".into()))
    }

    /// Send writes to the runtime thread and wait until they are acknowledged; the mirror holds
    /// them before this returns.
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.cmds.send(Cmd::Write(writes, tx)).map_err(|_| StoreError::Backend("the store's runtime has stopped".into()))?;
        let r = rx.recv_timeout(WRITE_TIMEOUT * 2).map_err(|_| StoreError::Backend("no answer from the store's runtime".into()))?;
        if let Err(StoreError::Conflict(_)) = &r {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The live records of `space` whose key starts with `prefix`, in key order, as `f` maps them.
    fn in_range<T>(&self, space: Space, prefix: &str, f: impl Fn(&str, &[u8]) -> T) -> Result<Vec<T>, StoreError> {
        let m = self.read()?;
        let from = (space.as_str(), prefix.to_string());
        Ok(m
            .range(from..)
            .take_while(|((s, k), _)| *s == space.as_str() && k.starts_with(prefix))
            .filter_map(|((_, k), seen)| seen.value.as_deref().map(|v| f(k, v)))
            .collect())
    }
}

impl Store for JetStreamStore {
    fn get(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(seen) = self.read()?.get(&(space.as_str(), key.to_string())) {
            return Ok(seen.value.clone());
        }
        // Never seen here: another replica may have just made it (an identity enrolled there a
        // moment ago, asking here; a certificate issued there, checked by OCSP here) and the
        // watch not have brought it yet. Ask the bucket. (Kept replies are looked up for every
        // request and mostly missing: those the watch brings are enough for a retry.)
        if space == Space::Replies {
            return Ok(None);
        }
        self.get_fresh(space, key)
    }

    fn scan(&self, space: Space) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_prefix(space, "")
    }

    fn count(&self, space: Space) -> Result<usize, StoreError> {
        self.count_prefix(space, "")
    }

    fn count_prefix(&self, space: Space, prefix: &str) -> Result<usize, StoreError> {
        Ok(self.in_range(space, prefix, |_, _| ())?.len())
    }

    fn scan_prefix(&self, space: Space, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.in_range(space, prefix, |k, v| (k.to_string(), v.to_vec()))
    }

    fn visit_after(&self, space: Space, prefix: &str, after: &str, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        use std::ops::Bound;
        // A chunk at a time, copied out under the lock: `f` may read the store.
        const CHUNK: usize = 256;
        let mut from = Bound::Excluded((space.as_str(), after.to_string()));
        if after < prefix {
            from = Bound::Included((space.as_str(), prefix.to_string()));
        }
        loop {
            let chunk: Vec<(String, Vec<u8>)> = {
                let m = self.read()?;
                m.range((from.clone(), Bound::Unbounded))
                    .take_while(|((s, k), _)| *s == space.as_str() && k.starts_with(prefix))
                    .filter_map(|((_, k), seen)| seen.value.as_ref().map(|v| (k.clone(), v.clone())))
                    .take(CHUNK)
                    .collect()
            };
            let Some((last, _)) = chunk.last() else { return Ok(()) };
            from = Bound::Excluded((space.as_str(), last.clone()));
            let full = chunk.len() == CHUNK;
            for (k, v) in &chunk {
                if !f(k, v) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The mirror under one lock. The watch brings the bucket's writes in stream order, so in
    /// a process that only reads (`tillit backup`) the mirror is a prefix of the bucket's
    /// history: a state the bucket was in. (A replica's own writes and fresh reads enter it
    /// out of that order.)
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let m = self.read()?;
        let mut out: Snapshot = Space::ALL.into_iter().map(|s| (s, Vec::new())).collect();
        for ((space, key), seen) in m.iter() {
            let (Some(v), Some(slot)) = (&seen.value, out.iter_mut().find(|(s, _)| s.as_str() == *space)) else { continue };
            slot.1.push((key.clone(), v.clone()));
        }
        Ok(out)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        // Each write expects the revision this replica saw, or the one its writer names.
        let mut writes = Vec::with_capacity(batch.ops.len());
        let stale = |op: &super::Op| {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            StoreError::Conflict(format!("{}/{} changed since it was read; read it again and retry", op.space.as_str(), op.key))
        };
        {
            let m = self.read()?;
            for op in batch.ops {
                let seen = m.get(&(op.space.as_str(), op.key.clone()));
                let expect = match (op.expect, seen) {
                    (None, seen) => seen.map(|s| s.revision),
                    // Created meanwhile (by another replica, as far as this one has seen).
                    (Some(super::Expect::Absent), Some(s)) if s.value.is_some() => return Err(stale(&op)),
                    // Never seen, or deleted at that revision: the bucket checks the rest.
                    (Some(super::Expect::Absent), seen) => seen.map(|s| s.revision),
                    (Some(super::Expect::Revision(r)), Some(s)) if s.revision != r => return Err(stale(&op)),
                    (Some(super::Expect::Revision(r)), _) => Some(r),
                };
                writes.push(Write { kv_key: kv_key(op.space, &op.key), expect, value: op.value });
            }
        }
        self.write(writes)
    }

    fn get_rev(&self, space: Space, key: &str) -> Result<Option<super::Versioned>, StoreError> {
        Ok(self.read()?.get(&(space.as_str(), key.to_string())).and_then(|s| Some((s.value.clone()?, Some(s.revision)))))
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every write was acknowledged by JetStream, which stores it before it acknowledges.
        Ok(())
    }

    fn get_fresh(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cmds.send(Cmd::Get(kv_key(space, key), tx)).map_err(|_| StoreError::Backend("the store's runtime has stopped".into()))?;
        rx.recv_timeout(WRITE_TIMEOUT * 2).map_err(|_| StoreError::Backend("no answer from the store's runtime".into()))??;
        Ok(self.read()?.get(&(space.as_str(), key.to_string())).and_then(|s| s.value.clone()))
    }

    fn others_changes(&self) -> u64 {
        self.foreign.load(Ordering::Relaxed)
    }

    fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    fn reachable(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn nats(&self) -> Option<async_nats::Client> {
        Some(self.client.clone())
    }

    fn backend(&self) -> &'static str {
        "jetstream"
    }

    fn compare_and_swap(&self, space: Space, key: &str, old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let seen = self.read()?.get(&(space.as_str(), key.to_string())).cloned();
        if seen.as_ref().and_then(|s| s.value.as_deref()) != old {
            return Ok(false);
        }
        match self.write(vec![Write { kv_key: kv_key(space, key), value: new, expect: seen.map(|s| s.revision) }]) {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// === the runtime thread ===

async fn run(
    connect: Connect,
    bucket: String,
    replicas: usize,
    mirror: Arc<RwLock<Mirror>>,
    foreign: Arc<AtomicU64>,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<Cmd>,
    ready: std::sync::mpsc::Sender<Result<async_nats::Client, StoreError>>,
) {
    let (kv, first, next, client) = match open_bucket(connect, &bucket, replicas, &mirror).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The watch exists before the store is handed out: no write after the load is missed.
    let js = async_nats::jetstream::new(client.clone());
    let _ = ready.send(Ok(client));
    let watch = tokio::spawn(follow(kv.clone(), mirror.clone(), foreign.clone(), first, next));
    // Each command runs as a task of its own: callers on other threads (the journal, requests
    // keeping their replies, reads of records never seen) overlap their round trips instead of
    // queueing behind each other. Writes to one record still meet at its compare-and-set.
    while let Some(cmd) = cmds.recv().await {
        let (js, kv, mirror, foreign) = (js.clone(), kv.clone(), mirror.clone(), foreign.clone());
        tokio::spawn(async move {
            match cmd {
                Cmd::Write(writes, reply) => {
                    let _ = reply.send(apply_writes(&js, &kv, &mirror, writes).await);
                }
                Cmd::Get(key, reply) => {
                    let r = match fresh(&kv, &key).await {
                        Ok(Some((revision, value))) => {
                            if remember(&mirror, &key, revision, value, Source::Watch) {
                                foreign.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(())
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(r);
                }
            }
        });
    }
    // The last handle is gone: the store was dropped.
    watch.abort();
}

type Opened = (async_nats::jetstream::kv::Store, async_nats::jetstream::kv::Watch, u64, async_nats::Client);

/// Bind (or create) the bucket, load the mirror, and start watching right after what was loaded.
async fn open_bucket(connect: Connect, bucket: &str, replicas: usize, mirror: &Arc<RwLock<Mirror>>) -> Result<Opened, StoreError> {
    let client = connect().await.map_err(backend("connect"))?;
    let js = async_nats::jetstream::new(client.clone());
    let kv = match js.get_key_value(bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: bucket.to_string(),
                description: "tillit: the estate's records (sealed where secret)".into(),
                history: 1,
                num_replicas: replicas.max(1),
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::Backend(format!("create the KV bucket {bucket}: {e}")))?,
    };
    let last = load(&kv, mirror).await?;
    let watch = kv.watch_all_from_revision(last + 1).await.map_err(|e| StoreError::Backend(format!("watch the bucket: {e}")))?;
    Ok((kv, watch, last + 1, client))
}

/// Load every current record into the mirror; the bucket's last revision loaded.
async fn load(kv: &async_nats::jetstream::kv::Store, mirror: &Arc<RwLock<Mirror>>) -> Result<u64, StoreError> {
    let status = kv.status().await.map_err(|e| StoreError::Backend(format!("bucket status: {e}")))?;
    let (messages, last) = (status.info.state.messages, status.info.state.last_sequence);
    if messages == 0 {
        return Ok(last);
    }
    let mut watch = kv.watch_with_history(">").await.map_err(|e| StoreError::Backend(format!("watch the bucket: {e}")))?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| StoreError::Backend(format!("read the bucket: {e}")))?;
        note(mirror, &entry);
        if entry.seen_current || entry.revision >= last {
            break;
        }
    }
    Ok(last)
}

/// Where a value the mirror takes comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The watch (any replica's write, this one's included, possibly late).
    Watch,
    /// This replica's own acknowledged write. A delete is noted at the revision it replaced (its
    /// own revision arrives with the watch), so an own write also wins a tie.
    Own,
}

/// Take a record's `revision` into the mirror, unless the mirror already holds a newer one;
/// true if it did.
fn remember(mirror: &Arc<RwLock<Mirror>>, kv_key: &str, revision: u64, value: Option<Vec<u8>>, from: Source) -> bool {
    let Some((space, key)) = record_key(kv_key) else { return false };
    let Ok(mut m) = mirror.write() else { return false };
    let slot = m.entry((space.as_str(), key)).or_insert(Seen { revision: 0, value: None });
    if revision > slot.revision || (from == Source::Own && revision == slot.revision) {
        *slot = Seen { revision, value };
        return true;
    }
    false
}

/// Take a watched entry into the mirror; true if it was news (another replica's write).
fn note(mirror: &Arc<RwLock<Mirror>>, entry: &async_nats::jetstream::kv::Entry) -> bool {
    let value = match entry.operation {
        async_nats::jetstream::kv::Operation::Put => Some(entry.value.to_vec()),
        _ => None,
    };
    remember(mirror, &entry.key, entry.revision, value, Source::Watch)
}

/// Keep the mirror current with every replica's writes, from revision `next` on (a watch that
/// fails is made again from the first revision it did not deliver, so nothing is skipped).
async fn follow(
    kv: async_nats::jetstream::kv::Store,
    mirror: Arc<RwLock<Mirror>>,
    foreign: Arc<AtomicU64>,
    first: async_nats::jetstream::kv::Watch,
    mut next: u64,
) {
    let mut watch = Some(first);
    loop {
        let w = match watch.take() {
            Some(w) => Ok(w),
            None => kv.watch_all_from_revision(next).await,
        };
        match w {
            Ok(mut w) => {
                // A watch whose server died delivers nothing until its heartbeat is missed
                // (seconds): every second the bucket's last revision is compared with what
                // came, and a watch behind twice in a row without progress is made again.
                let mut probe = tokio::time::interval(WATCH_PROBE);
                let (mut behind, mut seen_at_probe) = (0, next);
                loop {
                    tokio::select! {
                        entry = w.next() => match entry {
                            Some(Ok(e)) => {
                                next = next.max(e.revision + 1);
                                if note(&mirror, &e) {
                                    foreign.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Some(Err(err)) => {
                                tracing::warn!("store watch: {err}; watching again");
                                break;
                            }
                            None => break,
                        },
                        _ = probe.tick() => {
                            let last = tokio::time::timeout(WATCH_PROBE, kv.status()).await.ok().and_then(|s| s.ok()).map(|s| s.info.state.last_sequence);
                            // Behind: the bucket has revisions the watch did not bring, and it
                            // brought nothing since the last probe.
                            match last {
                                Some(l) if l >= next && next == seen_at_probe => behind += 1,
                                Some(_) => behind = 0,
                                None => {}
                            }
                            seen_at_probe = next;
                            if behind >= 2 {
                                tracing::warn!(next, "store watch fell behind the bucket; watching again");
                                break;
                            }
                        }
                    }
                }
            }
            Err(err) => tracing::warn!("cannot watch the store bucket: {err}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait (bounded) for JetStream to acknowledge one write; `conflict` says whether its error
/// means the record changed under this replica.
async fn acked<T, E: std::fmt::Display>(
    what: &str,
    kv_key: &str,
    write: impl std::future::Future<Output = Result<T, E>>,
    conflict: impl FnOnce(&E) -> bool,
) -> Result<T, StoreError> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(StoreError::Backend(format!("{what} {kv_key}: timed out"))),
        Ok(Err(e)) if conflict(&e) => Err(StoreError::Conflict(format!("{kv_key} changed under this replica; read it again and retry"))),
        Ok(Err(e)) => Err(StoreError::Backend(format!("{what} {kv_key}: {e}"))),
        Ok(Ok(t)) => Ok(t),
    }
}

/// Apply writes, each a compare-and-set; the mirror takes each as it is acknowledged. Writes
/// to distinct keys are published one after the other without waiting, then their
/// acknowledgements awaited (one round trip for the batch instead of one per record; the
/// stream stores them in the order they were sent).
async fn apply_writes(
    js: &async_nats::jetstream::Context,
    kv: &async_nats::jetstream::kv::Store,
    mirror: &Arc<RwLock<Mirror>>,
    writes: Vec<Write>,
) -> Result<(), StoreError> {
    let distinct = writes.iter().map(|w| w.kv_key.as_str()).collect::<std::collections::BTreeSet<_>>().len() == writes.len();
    if writes.len() < 2 || !distinct || kv.use_jetstream_prefix {
        return apply_one_by_one(kv, mirror, writes).await;
    }
    let prefix = kv.put_prefix.clone().unwrap_or_else(|| kv.prefix.clone());
    let mut sent = Vec::with_capacity(writes.len());
    for w in writes {
        if w.value.is_none() && w.expect.is_none() {
            continue;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, w.expect.unwrap_or(0).to_string().as_str());
        if w.value.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let payload = w.value.clone().unwrap_or_default();
        let ack = js.publish_with_headers(format!("{prefix}{}", w.kv_key), headers, payload.into()).await;
        sent.push((w, ack));
    }
    let mut failed = None;
    for (w, ack) in sent {
        let r = match ack {
            Ok(f) => match tokio::time::timeout(WRITE_TIMEOUT, f).await {
                Ok(Ok(a)) => Ok(a.sequence),
                Ok(Err(e)) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => {
                    Err(StoreError::Conflict(format!("{} changed under this replica; read it again and retry", w.kv_key)))
                }
                Ok(Err(e)) => Err(StoreError::Backend(format!("write {}: {e}", w.kv_key))),
                Err(_) => Err(StoreError::Backend(format!("write {}: timed out", w.kv_key))),
            },
            Err(e) => Err(StoreError::Backend(format!("write {}: {e}", w.kv_key))),
        };
        let revision = match r {
            // A delete is noted at the revision it replaced (its own arrives with the watch).
            Ok(seq) => match w.value {
                Some(_) => seq,
                None => w.expect.unwrap_or(seq),
            },
            Err(StoreError::Conflict(m)) => match settled(kv, mirror, &w).await {
                Some(rev) => rev,
                None => {
                    failed.get_or_insert(StoreError::Conflict(m));
                    continue;
                }
            },
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        remember(mirror, &w.kv_key, revision, w.value, Source::Own);
    }
    failed.map_or(Ok(()), Err)
}

/// A record as the bucket's stream leader holds it: its revision and value (`None`: deleted), or
/// `None` if it never existed. (The KV's own read may be answered by a follower that has not
/// received the latest write yet.)
async fn fresh(kv: &async_nats::jetstream::kv::Store, key: &str) -> Result<Option<(u64, Option<Vec<u8>>)>, StoreError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", kv.prefix);
    match tokio::time::timeout(WRITE_TIMEOUT, kv.stream.get_last_raw_message_by_subject(&subject)).await {
        Err(_) => Err(StoreError::Backend(format!("read {key}: timed out"))),
        Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Ok(Err(e)) => Err(StoreError::Backend(format!("read {key}: {e}"))),
        Ok(Ok(m)) => {
            let op = m.headers.get("KV-Operation").map(|v| v.as_str().to_string());
            let value = match op.as_deref() {
                Some("DEL") | Some("PURGE") => None,
                _ => Some(m.payload.to_vec()),
            };
            Ok(Some((m.sequence, value)))
        }
    }
}

/// After a refused compare-and-set: read the record from the bucket. It may hold this very
/// write (a publish JetStream stored but whose answer was lost when a node went down, retried
/// by the client): then it is done, at the revision returned. Otherwise the mirror learns the
/// newer revision, so the caller's next try compares with it.
async fn settled(kv: &async_nats::jetstream::kv::Store, mirror: &Arc<RwLock<Mirror>>, w: &Write) -> Option<u64> {
    let found = fresh(kv, &w.kv_key).await.ok()?;
    if let Some((revision, value)) = &found {
        remember(mirror, &w.kv_key, *revision, value.clone(), Source::Watch);
    }
    match found {
        Some((revision, value)) if value == w.value => Some(revision),
        None if w.value.is_none() => w.expect.or(Some(0)),
        _ => None,
    }
}

/// [`apply_writes`] one write at a time (a key written twice in the batch).
async fn apply_one_by_one(kv: &async_nats::jetstream::kv::Store, mirror: &Arc<RwLock<Mirror>>, writes: Vec<Write>) -> Result<(), StoreError> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    let stale = |e: &async_nats::jetstream::kv::UpdateError| e.kind() == UpdateErrorKind::WrongLastRevision;
    // A key written twice in one batch: the second write expects the first one's revision.
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    for w in writes {
        let expect = done.get(&w.kv_key).copied().or(w.expect);
        let written = match (&w.value, expect) {
            (Some(v), Some(rev)) => acked("write", &w.kv_key, kv.update(&w.kv_key, v.clone().into(), rev), stale).await,
            (Some(v), None) => {
                acked("write", &w.kv_key, kv.create(&w.kv_key, v.clone().into()), |e| e.kind() == CreateErrorKind::AlreadyExists).await
            }
            (None, None) => continue,
            (None, Some(rev)) => {
                // The delete's own revision arrives with the watch; until then the record reads
                // as gone at the revision it replaced.
                acked("delete", &w.kv_key, kv.delete_expect_revision(&w.kv_key, Some(rev)), stale).await.map(|_| rev)
            }
        };
        let revision = match written {
            Ok(r) => r,
            Err(StoreError::Conflict(m)) => match settled(kv, mirror, &w).await {
                Some(rev) => rev,
                None => return Err(StoreError::Conflict(m)),
            },
            Err(e) => return Err(e),
        };
        remember(mirror, &w.kv_key, revision, w.value, Source::Own);
        done.insert(w.kv_key, revision);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_key_maps_to_a_valid_kv_key_and_back() {
        for (space, key) in [
            (Space::Identities, "UABC"),
            (Space::SecretValues, "acme/shop/prod/db#3"),
            (Space::Sites, "agent/UXYZ"),
            (Space::Meta, ""),
            (Space::Roles, "acme--prod/shop/orders"),
            (Space::Meta, "site_upgrade_asked/east"),
            (Space::Keys, "ünïcödé key with spaces"),
        ] {
            let k = kv_key(space, key);
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)), "{k}");
            assert_eq!(k.matches('.').count(), 1, "{k}");
            assert_eq!(record_key(&k), Some((space, key.to_string())), "{k}");
        }
        assert_eq!(record_key("nope.abc"), None);
        assert_eq!(record_key("meta.!!"), None);
        assert_eq!(record_key("meta"), None);
    }
}
