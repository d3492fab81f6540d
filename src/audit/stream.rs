//! The journal on a JetStream stream, for a control plane of several replicas on one store.
//!
//! Each append is one message (a group of records, one line each, the same lines as the file
//! log), published with `Nats-Expected-Last-Sequence`: the stream takes it only if no replica
//! appended since this one last saw the stream's end, so the hash chain has one order across
//! replicas. When another replica appended first, this one reads what it missed (checking every
//! line's MAC and the chain), waits until the store holds those records' changes (the
//! checkpoint), and then:
//! - if none of them changed the store (reads, refusals), it appends again on the new head;
//! - if one did, the entries that carry store writes are refused with [`AuditError::Conflict`]:
//!   they were computed from a state that is no longer current, and their request is served
//!   again from the fresh state (serializable across replicas; never a lost update).
//!
//! After a message is acknowledged its store writes are applied, then the checkpoint
//! (`meta/journal_checkpoint`, MACed: stream sequence, record seq and hash) moves past it; a
//! replica that died in between leaves its changes to the next one, which applies them from the
//! records' redo ops once the checkpoint has lagged for [`APPLY_GRACE`]. The stream denies delete
//! and purge; only the control plane's store user may publish to it.

use super::{authenticated_line, batch_of, line_mac, redo_of, AuditError, Entry, Record, GENESIS};
use crate::clock::{rfc3339, SharedClock};
use crate::crypto::{self, MacKey};
use crate::store::{Space, Store, StoreError};
use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a replica waits for another's appended changes to reach the store before applying
/// them itself (the other died between its append and its apply).
pub const APPLY_GRACE: Duration = Duration::from_secs(2);
/// Header of a message whose records change the store.
const HDR_CHANGES: &str = "Tillit-Changes";
/// Largest message body (records are split across messages beyond it).
const MAX_MESSAGE: usize = 512 * 1024;
/// How long one publish or read may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a committed record's changes are retried against a store that is away.
const COMMITTED_APPLY_WAIT: Duration = Duration::from_secs(30);
/// The checkpoint's record key in [`Space::Meta`].
pub const CHECKPOINT_KEY: &str = "journal_checkpoint";

/// Where the store is up to in the stream (MACed).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct StreamCheckpoint {
    /// The last stream message whose changes are in the store (and every one before it).
    pub stream_seq: u64,
    pub seq: u64,
    pub hash: String,
    pub mac: String,
}

impl StreamCheckpoint {
    fn signed(key: &MacKey, stream_seq: u64, seq: u64, hash: &str) -> Self {
        let mac = key.mac_hex(format!("journal-checkpoint:{stream_seq}:{seq}:{hash}").as_bytes());
        StreamCheckpoint { stream_seq, seq, hash: hash.to_string(), mac }
    }
    /// Whether `key` made it.
    pub fn authentic(&self, key: &MacKey) -> bool {
        key.verify_hex(format!("journal-checkpoint:{}:{}:{}", self.stream_seq, self.seq, self.hash).as_bytes(), &self.mac)
    }
}

/// The stream's configuration.
pub fn stream_config(name: &str, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: name.to_string(),
        description: Some("tillit: the audit journal (hash-chained, authenticated records; the redo log)".into()),
        subjects: vec![crate::subjects::JOURNAL.to_string()],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// One message of the stream, read back and checked.
struct Read {
    stream_seq: u64,
    records: Vec<Record>,
    /// The hash of the message's last line.
    hash: String,
    changes: bool,
}

/// The journal's writer on a stream.
pub struct StreamWriter {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    stream: String,
    store: Arc<dyn Store>,
    clock: SharedClock,
    key: MacKey,
    /// The last stream message this replica knows of.
    stream_seq: u64,
    seq: u64,
    hash: String,
    last_checkpoint: Instant,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter").field("stream", &self.stream).field("stream_seq", &self.stream_seq).finish_non_exhaustive()
    }
}

fn nats_err(what: &str) -> impl Fn(String) -> AuditError + '_ {
    move |e| AuditError::Io { path: format!("journal stream ({what})"), source: std::io::Error::other(e) }
}

fn damaged(stream_seq: u64, reason: String) -> AuditError {
    AuditError::Damaged { path: "journal stream".into(), line: stream_seq as usize, reason }
}

impl StreamWriter {
    /// Bind (or create) the stream `name` on `client`'s account, find its head, import the file
    /// log `file_log` if the stream is new and the store was migrated from a file-logged estate,
    /// and apply what the store's checkpoint has not.
    pub fn open(
        client: async_nats::Client,
        name: &str,
        replicas: usize,
        store: Arc<dyn Store>,
        clock: SharedClock,
        key: MacKey,
        file_log: Option<std::path::PathBuf>,
    ) -> Result<Self, AuditError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| nats_err("runtime")(e.to_string()))?;
        // The context's acknowledgement task runs on this runtime (polled while a call waits).
        let js = {
            let _in = rt.enter();
            jetstream::new(client)
        };
        let mut w = StreamWriter {
            rt,
            js,
            stream: name.to_string(),
            store,
            clock,
            key,
            stream_seq: 0,
            seq: 0,
            hash: GENESIS.into(),
            last_checkpoint: Instant::now(),
        };
        let last = w.rt.block_on(async {
            let mut s = match w.js.get_stream(name).await {
                Ok(s) => s,
                Err(_) => w.js.create_stream(stream_config(name, replicas)).await.map_err(|e| nats_err("create")(e.to_string()))?,
            };
            let info = s.info().await.map_err(|e| nats_err("info")(e.to_string()))?;
            Ok::<u64, AuditError>(info.state.last_sequence)
        })?;
        if last == 0 {
            if let Some(path) = file_log {
                w.import(&path)?;
            }
        }
        w.catch_up()?;
        Ok(w)
    }

    /// Bring a migrated estate's file log into the empty stream: its lines, in order, each
    /// checked, then the checkpoint (the store already holds their changes).
    fn import(&mut self, path: &std::path::Path) -> Result<(), AuditError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(AuditError::Io { path: path.display().to_string(), source }),
        };
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        if lines.is_empty() {
            return Ok(());
        }
        let mut chunk: Vec<u8> = Vec::new();
        let (mut seq, mut hash) = (0u64, GENESIS.to_string());
        for (i, line) in lines.iter().enumerate() {
            let rec: Record = serde_json::from_slice(line).map_err(|e| damaged(0, format!("file log line {}: {e}", i + 1)))?;
            if rec.seq != seq + 1 || rec.prev != hash {
                return Err(damaged(0, format!("file log line {}: seq {} does not follow seq {seq}", i + 1, rec.seq)));
            }
            if line_mac(&self.key, line) == Some(false) {
                return Err(damaged(0, format!("file log line {}: not authenticated by this estate's master key", i + 1)));
            }
            seq = rec.seq;
            hash = crypto::sha256_hex(line);
            chunk.extend_from_slice(line);
            chunk.push(b'\n');
            if chunk.len() > MAX_MESSAGE || i + 1 == lines.len() {
                chunk.pop();
                let body = std::mem::take(&mut chunk);
                let ack = self.publish(body, false)?.map_err(|_| damaged(0, "another replica wrote the journal while it was imported".into()))?;
                self.stream_seq = ack;
            }
        }
        self.seq = seq;
        self.hash = hash;
        self.advance_checkpoint(self.stream_seq)?;
        tracing::info!(records = seq, "audit log imported into the journal stream");
        Ok(())
    }

    /// Publish one message expecting the stream to end at `self.stream_seq`; `Ok(Err(()))` when
    /// another replica appended first.
    fn publish(&self, body: Vec<u8>, changes: bool) -> Result<Result<u64, ()>, AuditError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_STREAM, self.stream.as_str());
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, self.stream_seq.to_string().as_str());
        if changes {
            headers.insert(HDR_CHANGES, "1");
        }
        self.rt.block_on(async {
            let ack = self
                .js
                .publish_with_headers(crate::subjects::JOURNAL, headers, body.into())
                .await
                .map_err(|e| AuditError::Unavailable(e.to_string()))?;
            match tokio::time::timeout(IO_TIMEOUT, ack).await {
                // Not acknowledged: it may or may not be in the stream; the next append's
                // expected sequence finds out (and reads it if it is).
                Err(_) => Err(AuditError::Unavailable("no acknowledgement within 5s".into())),
                Ok(Ok(a)) => Ok(Ok(a.sequence)),
                // 10071: wrong last sequence.
                Ok(Err(e)) if e.to_string().contains("10071") || e.to_string().to_lowercase().contains("wrong last sequence") => Ok(Err(())),
                Ok(Err(e)) => Err(AuditError::Unavailable(e.to_string())),
            }
        })
    }

    /// Read message `stream_seq` and check it follows `(seq, hash)`.
    fn read(&self, stream_seq: u64, seq: u64, hash: &str) -> Result<Read, AuditError> {
        let msg = self.rt.block_on(async {
            let s = self.js.get_stream_no_info(&self.stream).await.map_err(|e| nats_err("read")(e.to_string()))?;
            leader_get(&s, stream_seq).await
        })?;
        let changes = msg.headers.get(HDR_CHANGES).is_some();
        let (records, hash) = check_message(&self.key, &msg.payload, seq, hash).map_err(|reason| damaged(stream_seq, reason))?;
        Ok(Read { stream_seq, records, hash, changes })
    }

    fn checkpoint(&self) -> Result<Option<StreamCheckpoint>, AuditError> {
        let cp: Option<StreamCheckpoint> = crate::store::get_json(self.store.as_ref(), Space::Meta, CHECKPOINT_KEY)?;
        match cp {
            Some(c) if !c.authentic(&self.key) => Err(damaged(
                c.stream_seq,
                "the store's journal checkpoint is not authenticated by this estate's master key (edited?)".into(),
            )),
            c => Ok(c),
        }
    }

    /// Move the checkpoint to `stream_seq` (with this writer's head), unless it is already there.
    fn advance_checkpoint(&mut self, stream_seq: u64) -> Result<(), AuditError> {
        for _ in 0..20 {
            let current = self.store.get(Space::Meta, CHECKPOINT_KEY)?;
            if let Some(c) = current.as_deref().and_then(|b| serde_json::from_slice::<StreamCheckpoint>(b).ok()) {
                if c.stream_seq >= stream_seq {
                    return Ok(());
                }
            }
            let next = serde_json::to_vec(&StreamCheckpoint::signed(&self.key, stream_seq, self.seq, &self.hash))
                .map_err(|e| AuditError::Store(StoreError::Backend(e.to_string())))?;
            if self.store.compare_and_swap(Space::Meta, CHECKPOINT_KEY, current.as_deref(), Some(next))? {
                self.last_checkpoint = Instant::now();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(AuditError::Store(StoreError::Conflict("the journal checkpoint kept changing".into())))
    }

    /// Whether the store's checkpoint (read from the store itself, not the local copy) is at or
    /// past `stream_seq`.
    fn applied_by_another(&self, stream_seq: u64) -> bool {
        self.store
            .get_fresh(Space::Meta, CHECKPOINT_KEY)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<StreamCheckpoint>(&b).ok())
            .filter(|c| c.authentic(&self.key))
            .is_some_and(|c| c.stream_seq >= stream_seq)
    }

    fn advance_checkpoint_if(&mut self, changes: bool, stream_seq: u64) -> Result<(), AuditError> {
        if changes || self.last_checkpoint.elapsed() > Duration::from_secs(1) {
            self.advance_checkpoint(stream_seq)?;
        }
        Ok(())
    }

    /// Read every message past this writer's head; make sure the store holds their changes
    /// (waiting for their writer, or applying them after [`APPLY_GRACE`]). True if one of them
    /// changed the store.
    fn catch_up(&mut self) -> Result<bool, AuditError> {
        let last = self.rt.block_on(async {
            let s = self.js.get_stream_no_info(&self.stream).await.map_err(|e| nats_err("info")(e.to_string()))?;
            let info = tokio::time::timeout(IO_TIMEOUT, s.get_info()).await.map_err(|_| nats_err("info")("timed out".into()))?;
            info.map(|i| i.state.last_sequence).map_err(|e| nats_err("info")(e.to_string()))
        })?;
        let cp = self.checkpoint()?;
        let applied = cp.as_ref().map(|c| c.stream_seq).unwrap_or(0);
        if self.stream_seq == 0 && last > 0 {
            // A fresh writer: start from the checkpoint (everything before it is applied).
            if let Some(c) = &cp {
                (self.stream_seq, self.seq, self.hash) = (c.stream_seq, c.seq, c.hash.clone());
            }
        }
        let mut pending: Vec<Read> = Vec::new();
        let mut changed = false;
        for s in self.stream_seq + 1..=last {
            let r = self.read(s, self.seq, &self.hash)?;
            self.stream_seq = s;
            self.seq = r.records.last().map(|r| r.seq).unwrap_or(self.seq);
            self.hash = r.hash.clone();
            if r.changes {
                changed = true;
                if s > applied {
                    pending.push(r);
                }
            }
        }
        let Some(newest) = pending.last().map(|r| r.stream_seq) else { return Ok(changed) };
        // Their writer applies them within milliseconds; wait for the checkpoint, then take over.
        let deadline = Instant::now() + APPLY_GRACE;
        loop {
            if self.checkpoint()?.map(|c| c.stream_seq).unwrap_or(0) >= newest {
                return Ok(changed);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let n = pending.len();
        for r in pending {
            for rec in &r.records {
                if !rec.redo.is_empty() {
                    self.apply_redo(batch_of(&rec.redo))?;
                }
            }
        }
        let (seq, hash) = (self.seq, self.hash.clone());
        self.advance_checkpoint(last)?;
        tracing::warn!(messages = n, seq, %hash, "journal: applied records whose writer did not (it stopped between its append and its apply)");
        Ok(changed)
    }

    /// Apply a record's redo ops, re-reading what another replica changed meanwhile.
    fn apply_redo(&self, batch: crate::store::Batch) -> Result<(), AuditError> {
        let deadline = Instant::now() + APPLY_GRACE * 5;
        for op in batch.ops {
            let mut tries = 0;
            loop {
                let mut one = crate::store::Batch::new();
                one.ops.push(op.clone());
                match self.store.apply(one) {
                    Ok(()) => break,
                    Err(StoreError::Conflict(_)) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // The store is away (a stream electing its leader): wait for it.
                    Err(StoreError::Backend(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Append `entries` after every record any replica appended; `Err(Conflict)` when another
    /// replica's change came first and `entries` carry store writes (serve them again).
    pub fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
        let changes = entries.iter().any(|e| !e.batch.is_empty());
        loop {
            let now = self.clock.now_unix();
            let time = rfc3339(now);
            let (mut seq, mut hash) = (self.seq, self.hash.clone());
            let mut body = Vec::with_capacity(entries.len() * 400);
            let mut seqs = Vec::with_capacity(entries.len());
            for e in &entries {
                seq += 1;
                let rec = Record {
                    seq,
                    time: time.clone(),
                    time_unix: now,
                    actor: e.actor.clone(),
                    action: e.action.clone(),
                    target: e.target.clone(),
                    outcome: e.outcome.clone(),
                    detail: e.detail.clone(),
                    redo: redo_of(&e.batch),
                    prev: hash,
                    mac: None,
                };
                let line = authenticated_line(&self.key, &rec).map_err(|e| nats_err("encode")(e.to_string()))?;
                hash = crypto::sha256_hex(&line);
                if !body.is_empty() {
                    body.push(b'\n');
                }
                body.extend_from_slice(&line);
                seqs.push(seq);
            }
            if body.len() > MAX_MESSAGE * 2 {
                return Err(nats_err("publish")(format!("a group of {} bytes is larger than a journal message may be", body.len())));
            }
            match self.publish(body, changes)? {
                Ok(stream_seq) => {
                    self.stream_seq = stream_seq;
                    self.seq = seq;
                    self.hash = hash;
                    let mut batch = crate::store::Batch::new();
                    for e in entries {
                        batch.ops.extend(e.batch.ops);
                    }
                    // The record is committed: its changes must reach the store. A store that is
                    // away for a moment (its stream electing a leader) is waited for.
                    let deadline = Instant::now() + COMMITTED_APPLY_WAIT;
                    loop {
                        let applied = match self.store.apply_in_order(batch.clone()) {
                            Ok(()) => self.advance_checkpoint_if(changes, stream_seq),
                            Err(e) => Err(e.into()),
                        };
                        match applied {
                            Ok(()) => return Ok(seqs),
                            // Another replica applied this record for us (it took us too long):
                            // the checkpoint, read from the store itself, is past it. Writing it
                            // again could undo a later record's change.
                            Err(AuditError::Store(StoreError::Conflict(_))) if self.applied_by_another(stream_seq) => return Ok(seqs),
                            Err(e) if Instant::now() < deadline => {
                                if self.applied_by_another(stream_seq) {
                                    return Ok(seqs);
                                }
                                tracing::warn!("journal: record {seq} is committed but its changes are not in the store yet ({e}); retrying");
                                std::thread::sleep(Duration::from_millis(250));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(()) => {
                    // Nothing of ours is committed yet: a store that is away makes this append
                    // fail as "unavailable", and its request be served again.
                    let others_changed = self.catch_up().map_err(|e| match e {
                        AuditError::Store(StoreError::Backend(m)) => AuditError::Unavailable(m),
                        e => e,
                    })?;
                    if others_changed && changes {
                        return Err(AuditError::Conflict);
                    }
                }
            }
        }
    }
}

/// Check one message's records: each authenticated by `key`, each following the one before,
/// starting after `(seq, hash)`. Its records and the hash of its last line, or why not.
fn check_message(key: &MacKey, payload: &[u8], seq: u64, hash: &str) -> Result<(Vec<Record>, String), String> {
    let (mut seq, mut hash) = (seq, hash.to_string());
    let mut records = Vec::new();
    for line in payload.split(|b| *b == b'\n') {
        if line_mac(key, line) != Some(true) {
            return Err(format!("a record after seq {seq} is not authenticated by this estate's master key; it is not applied"));
        }
        let rec: Record = serde_json::from_slice(line).map_err(|e| format!("record after seq {seq}: {e}"))?;
        if rec.seq != seq + 1 || rec.prev != hash {
            return Err(format!("record seq {} does not follow seq {seq}", rec.seq));
        }
        seq = rec.seq;
        hash = crypto::sha256_hex(line);
        records.push(rec);
    }
    Ok((records, hash))
}

/// Message `seq` from the stream's leader (a direct get may be answered by a follower that has
/// not received it yet), waiting out a moment of leader election (20 tries, 100 ms apart).
async fn leader_get<I>(stream: &jetstream::stream::Stream<I>, seq: u64) -> Result<jetstream::message::StreamMessage, AuditError> {
    let mut tries = 0;
    loop {
        match tokio::time::timeout(IO_TIMEOUT, stream.get_raw_message(seq)).await {
            Ok(Ok(m)) => return Ok(m),
            Ok(Err(e)) if tries >= 20 => return Err(nats_err("read")(format!("message {seq}: {e}"))),
            Err(_) if tries >= 20 => return Err(nats_err("read")(format!("message {seq}: timed out"))),
            _ => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Read the whole journal stream `name` in order, checking every record (its MAC under `key`,
/// the chain); `each` sees every record. What was found, or the first bad record.
pub async fn read_stream(
    client: async_nats::Client,
    name: &str,
    key: &MacKey,
    mut each: impl FnMut(&Record),
) -> Result<Result<super::Verified, super::ChainError>, AuditError> {
    read_stream_lines(client, name, key, u64::MAX, |_, r| each(r)).await.map(|r| r.map(|(v, _)| v))
}

/// [`read_stream`] up to stream message `upto` (or the end), `each` seeing every record with
/// its line exactly as stored; also the last stream message read.
pub async fn read_stream_lines(
    client: async_nats::Client,
    name: &str,
    key: &MacKey,
    upto: u64,
    mut each: impl FnMut(&[u8], &Record),
) -> Result<Result<(super::Verified, u64), super::ChainError>, AuditError> {
    let js = jetstream::new(client);
    let stream = js.get_stream(name).await.map_err(|e| nats_err("open")(e.to_string()))?;
    let last = stream.get_info().await.map_err(|e| nats_err("info")(e.to_string()))?.state.last_sequence.min(upto);
    let (mut seq, mut hash) = (0u64, GENESIS.to_string());
    for at in 1..=last {
        let m = leader_get(&stream, at).await?;
        match check_message(key, &m.payload, seq, &hash) {
            Ok((records, h)) => {
                for (line, r) in m.payload.split(|b| *b == b'\n').zip(&records) {
                    each(line, r);
                }
                seq = records.last().map(|r| r.seq).unwrap_or(seq);
                hash = h;
            }
            Err(reason) => return Ok(Err(super::ChainError { line: at as usize, seq: seq + 1, reason })),
        }
    }
    Ok(Ok((super::Verified { records: seq, head: hash, authenticated: seq, legacy: 0, anchored: true }, last)))
}

/// The last records of journal stream `name` that `keep` selects (at most `n`, oldest first),
/// before sequence number `before` if given, read backwards from its end, looking at no more
/// than `scan` records below `before`. Not MAC-checked
/// ([`read_stream`] checks the whole stream).
pub async fn tail_stream(
    client: async_nats::Client,
    name: &str,
    n: usize,
    scan: usize,
    before: Option<u64>,
    mut keep: impl FnMut(&Record) -> bool,
) -> Result<Vec<Record>, AuditError> {
    let js = jetstream::new(client);
    let stream = js.get_stream(name).await.map_err(|e| nats_err("open")(e.to_string()))?;
    let state = stream.get_info().await.map_err(|e| nats_err("info")(e.to_string()))?.state;
    let (first, mut at) = (state.first_sequence.max(1), state.last_sequence);
    let (mut out, mut seen) = (Vec::new(), 0usize);
    while at >= first && at > 0 && out.len() < n && seen < scan {
        let m = leader_get(&stream, at).await?;
        let mut recs: Vec<Record> = m.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect();
        // Records from `before` on are passed over without counting against `scan`.
        recs.retain(|r| before.is_none_or(|b| r.seq < b));
        seen += recs.len();
        recs.reverse();
        out.extend(recs.into_iter().filter(|r| keep(r)).take(n - out.len()));
        at -= 1;
    }
    out.reverse();
    Ok(out)
}
