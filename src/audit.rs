//! The audit log: append-only, hash-chained JSON lines at `DATA/audit/audit.jsonl`, written in
//! groups with one fsync each. It is also the control plane's redo log.
//!
//! Every state change is a record *first*: a request's store writes travel with its audit record
//! ([`Entry::batch`]); the journal thread appends the group's lines, `fdatasync`s the file, and only
//! then applies the writes to the store (in memory; the store is flushed in the background). A
//! reply is sent after that, so it is never ahead of its record, and a change without a record
//! cannot happen (fail closed). After a crash, records past the store's checkpoint are re-applied
//! from their `redo` ops (only public records — identities, tokens, roles, accounts — travel this
//! way; sealed keys are committed to the store synchronously).
//!
//! Each line is one [`Record`]; `prev` is the SHA-256 (hex) of the previous line's bytes, the
//! first line's `prev` is 64 zeros, and `mac` (the last field) is an HMAC-SHA256 of the line
//! without it, under a key derived from the master key ([`AUDIT_KEY_LABEL`]). The chain orders
//! the records; the MAC makes them the control plane's: whoever can write the data dir but does
//! not hold the master key cannot add, alter or re-chain a record, and recovery replays only
//! authenticated records. The head (`audit/head.json`: last seq and hash, MACed) and the store's
//! checkpoint (MACed) anchor the end of the log, so a truncation is named too. [`verify`]
//! checks the whole log and names the first bad record; it reads plain files, so it works while
//! `serve` runs.

use crate::clock::{rfc3339, SharedClock};
use crate::crypto::{self, MacKey};
use crate::store::{Batch, Space, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// File name of the log inside `DATA/audit`.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The head anchor's file name inside `DATA/audit`.
pub const HEAD_FILE: &str = "head.json";
/// What the audit MAC key is derived under ([`crate::crypto::MasterKey::derive`]).
pub const AUDIT_KEY_LABEL: &str = "tillit audit mac v1";
/// `,"mac":"` + 64 hex + `"}`: how an authenticated line ends.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;
/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Most entries written with one fsync.
const MAX_GROUP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("audit log {path} is damaged at line {line}: {reason}; run `tillit audit verify` and restore it from backup")]
    Damaged { path: String, line: usize, reason: String },
    #[error("audit log is not writable (an earlier write failed); no change is accepted until `tillit serve` restarts")]
    Broken,
    #[error("audit journal stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One write carried in a record, for replay after a crash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RedoOp {
    pub space: String,
    pub key: String,
    pub value: Option<serde_json::Value>,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    pub time_unix: i64,
    /// Who acted (a SPIFFE id, or `tillit` for the control plane itself).
    pub actor: String,
    /// What was done: `init`, `token.create`, `enroll`, `renew`, `grant`, `revoke`, …
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `ok`, or `denied:<code>`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redo: Vec<RedoOp>,
    /// SHA-256 of the previous line.
    pub prev: String,
    /// HMAC-SHA256 of this line without this field (always the last field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The line of `rec` with its MAC as the last field.
fn authenticated_line(key: &MacKey, rec: &Record) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = serde_json::to_vec(&Record { mac: None, ..rec.clone() })?;
    let mac = key.mac_hex(&body);
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"mac\":\"");
    body.extend_from_slice(mac.as_bytes());
    body.extend_from_slice(b"\"}");
    Ok(body)
}

/// Whether `line` carries a MAC field at its end, and if so whether it is valid under `key`.
fn line_mac(key: &MacKey, line: &[u8]) -> Option<bool> {
    if line.len() < MAC_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - MAC_SUFFIX_LEN;
    if !line[cut..].starts_with(b",\"mac\":\"") {
        return None;
    }
    let mac = std::str::from_utf8(&line[cut + 8..line.len() - 2]).ok()?;
    let mut body = line[..cut].to_vec();
    body.push(b'}');
    Some(key.verify_hex(&body, mac))
}

/// A record to write, with the store writes it stands for.
#[derive(Debug, Default)]
pub struct Entry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: Option<serde_json::Value>,
    pub batch: Batch,
}

impl Entry {
    pub fn ok(actor: &str, action: &str, target: &str) -> Self {
        Entry { actor: actor.into(), action: action.into(), target: target.into(), outcome: "ok".into(), ..Default::default() }
    }
    pub fn denied(actor: &str, action: &str, target: &str, code: &str) -> Self {
        Entry {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: format!("denied:{code}"),
            ..Default::default()
        }
    }
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = Some(d);
        self
    }
    pub fn batch(mut self, b: Batch) -> Self {
        self.batch = b;
        self
    }
}

/// Where the store is up to, stored in the store with each applied group (MACed, so a store
/// edited without the master key cannot move it).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Checkpoint {
    seq: u64,
    offset: u64,
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl Checkpoint {
    fn signed(key: &MacKey, seq: u64, offset: u64, hash: String) -> Self {
        let mac = key.mac_hex(format!("checkpoint:{seq}:{offset}:{hash}").as_bytes());
        Checkpoint { seq, offset, hash, mac: Some(mac) }
    }
    fn authentic(&self, key: &MacKey) -> bool {
        self.mac.as_deref().is_some_and(|m| key.verify_hex(format!("checkpoint:{}:{}:{}", self.seq, self.offset, self.hash).as_bytes(), m))
    }
}

/// The head anchor (`audit/head.json`): the last record written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub mac: String,
}

impl Head {
    fn signed(key: &MacKey, seq: u64, hash: &str) -> Self {
        Head { seq, hash: hash.to_string(), mac: key.mac_hex(format!("head:{seq}:{hash}").as_bytes()) }
    }
    fn authentic(&self, key: &MacKey) -> bool {
        key.verify_hex(format!("head:{}:{}", self.seq, self.hash).as_bytes(), &self.mac)
    }
}

/// The spaces whose writes travel in records: public data only (sealed keys never do).
fn space_of(name: &str) -> Option<Space> {
    match name {
        "identities" => Some(Space::Identities),
        "tokens" => Some(Space::Tokens),
        "roles" => Some(Space::Roles),
        "accounts" => Some(Space::Accounts),
        "serials" => Some(Space::Serials),
        "sites" => Some(Space::Sites),
        _ => None,
    }
}

fn redo_of(batch: &Batch) -> Vec<RedoOp> {
    batch
        .ops
        .iter()
        .filter(|op| space_of(op.space.as_str()).is_some())
        .map(|op| RedoOp {
            space: op.space.as_str().into(),
            key: op.key.clone(),
            value: op.value.as_ref().and_then(|v| serde_json::from_slice(v).ok()),
        })
        .collect()
}

fn batch_of(redo: &[RedoOp]) -> Batch {
    let mut b = Batch::new();
    for op in redo {
        if let Some(space) = space_of(&op.space) {
            match &op.value {
                Some(v) => {
                    b.put(space, op.key.clone(), serde_json::to_vec(v).unwrap_or_default());
                }
                None => {
                    b.delete(space, op.key.clone());
                }
            }
        }
    }
    b
}

// === the writer ===

/// The synchronous writer: owns the file, the chain head and the store checkpoint.
pub struct Writer {
    path: PathBuf,
    file: File,
    store: Arc<dyn Store>,
    clock: SharedClock,
    seq: u64,
    hash: String,
    offset: u64,
    broken: bool,
    key: MacKey,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Writer {
    /// Open `dir/audit.jsonl` (creating it), find the chain head, and replay records the store
    /// has not applied yet.
    pub fn open(dir: &Path, store: Arc<dyn Store>, clock: SharedClock, key: MacKey) -> Result<Self, AuditError> {
        let path = dir.join(AUDIT_FILE);
        let io = |source| AuditError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let cp: Checkpoint = crate::store::get_json(store.as_ref(), Space::Meta, "audit_checkpoint")?.unwrap_or(Checkpoint {
            seq: 0,
            offset: 0,
            hash: GENESIS.into(),
            mac: None,
        });
        if cp.seq > 0 && !cp.authentic(&key) {
            if cp.mac.is_some() {
                return Err(AuditError::Damaged {
                    path: path.display().to_string(),
                    line: 0,
                    reason: "the store's audit checkpoint is not authenticated by this estate's master key (edited?)".into(),
                });
            }
            tracing::warn!("the audit checkpoint predates authenticated records; it is signed from now on");
        }
        let mut w =
            Writer { path: path.clone(), file, store, clock, seq: cp.seq, hash: cp.hash.clone(), offset: cp.offset, broken: false, key };
        w.recover(cp)?;
        Ok(w)
    }

    fn recover(&mut self, cp: Checkpoint) -> Result<(), AuditError> {
        let io = |source| AuditError::Io { path: self.path.display().to_string(), source };
        let len = self.file.metadata().map_err(io)?.len();
        if cp.offset > len {
            return Err(AuditError::Damaged {
                path: self.path.display().to_string(),
                line: 0,
                reason: format!("the store has applied records up to byte {} but the log has {len} bytes (truncated?)", cp.offset),
            });
        }
        let mut rd = BufReader::new(File::open(&self.path).map_err(io)?);
        rd.seek(SeekFrom::Start(cp.offset)).map_err(io)?;
        let mut line = String::new();
        let mut offset = cp.offset;
        let mut replayed = 0usize;
        loop {
            line.clear();
            let n = rd.read_line(&mut line).map_err(io)?;
            if n == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // A torn last line (crash mid-write, never synced): drop it.
                self.file.set_len(offset).map_err(io)?;
                tracing::warn!("audit log ended in a partial line; removed it");
                break;
            }
            let text = line.trim_end_matches('\n');
            // Only records this control plane wrote are obeyed: a line appended by someone
            // without the master key stops the start instead of changing the store.
            if line_mac(&self.key, text.as_bytes()) != Some(true) {
                return Err(AuditError::Damaged {
                    path: self.path.display().to_string(),
                    line: 0,
                    reason: format!(
                        "the record after seq {} is not authenticated by this estate's master key; it was not written by tillit and is not applied",
                        self.seq
                    ),
                });
            }
            let rec: Record = serde_json::from_str(text).map_err(|e| AuditError::Damaged {
                path: self.path.display().to_string(),
                line: 0,
                reason: format!("record after seq {}: {e}", self.seq),
            })?;
            if rec.seq != self.seq + 1 || rec.prev != self.hash {
                return Err(AuditError::Damaged {
                    path: self.path.display().to_string(),
                    line: 0,
                    reason: format!("record seq {} does not follow seq {}", rec.seq, self.seq),
                });
            }
            offset += n as u64;
            self.seq = rec.seq;
            self.hash = crypto::sha256_hex(text.as_bytes());
            let mut b = batch_of(&rec.redo);
            b.put_json(Space::Meta, "audit_checkpoint", &Checkpoint::signed(&self.key, self.seq, offset, self.hash.clone()))?;
            self.store.apply(b)?;
            replayed += 1;
        }
        self.offset = offset;
        if replayed > 0 {
            self.store.sync()?;
            tracing::info!(replayed, seq = self.seq, "audit log: replayed records the store had not applied");
        }
        Ok(())
    }

    /// Append `entries` (one fsync), then apply their store writes. All or nothing.
    pub fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
        if self.broken {
            return Err(AuditError::Broken);
        }
        let now = self.clock.now_unix();
        let time = rfc3339(now);
        let (mut seq, mut hash) = (self.seq, self.hash.clone());
        let mut buf = Vec::with_capacity(entries.len() * 400);
        let mut batch = Batch::new();
        let mut seqs = Vec::with_capacity(entries.len());
        for e in entries {
            seq += 1;
            let rec = Record {
                seq,
                time: time.clone(),
                time_unix: now,
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
                detail: e.detail,
                redo: redo_of(&e.batch),
                prev: hash,
                mac: None,
            };
            let line = authenticated_line(&self.key, &rec).map_err(|e| AuditError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            })?;
            hash = crypto::sha256_hex(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            batch.ops.extend(e.batch.ops);
            seqs.push(seq);
        }
        let io = |source| AuditError::Io { path: self.path.display().to_string(), source };
        if let Err(e) = self.file.write_all(&buf).and_then(|_| self.file.sync_data()) {
            // Take the partial write back so the chain stays whole; if that fails too, stop.
            if self.file.set_len(self.offset).and_then(|_| self.file.sync_data()).is_err() {
                self.broken = true;
            }
            return Err(io(e));
        }
        self.offset += buf.len() as u64;
        self.seq = seq;
        self.hash = hash;
        // The checkpoint is the last write: a crash before it makes recovery replay the group.
        batch.put_json(Space::Meta, "audit_checkpoint", &Checkpoint::signed(&self.key, seq, self.offset, self.hash.clone()))?;
        self.store.apply_in_order(batch)?;
        self.write_head();
        Ok(seqs)
    }
}

impl Writer {
    /// Replace `head.json` (temp file, rename; not synced: it may lag the log after a crash,
    /// never lead it).
    fn write_head(&self) {
        let Some(dir) = self.path.parent() else { return };
        let head = Head::signed(&self.key, self.seq, &self.hash);
        let tmp = dir.join(format!(".{HEAD_FILE}.tmp"));
        let r = serde_json::to_vec(&head)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, dir.join(HEAD_FILE)));
        if let Err(e) = r {
            tracing::warn!("cannot update the audit head anchor: {e}");
        }
    }
}

// === the journal (async face) ===

/// Entries to write and, unless relaxed, who waits for them to be durable.
type Job = (Vec<Entry>, Option<oneshot::Sender<Result<Vec<u64>, String>>>);

/// How long relaxed records (reads, refusals) may wait to share an fsync.
const RELAXED_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Handle to the journal thread: group commit of audit records and their store writes.
#[derive(Clone, Debug)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Job>,
}

impl Journal {
    /// Run `writer` on its own thread.
    pub fn start(mut writer: Writer) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let spawned = std::thread::Builder::new().name("tillit-audit".into()).spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut urgent = first.1.is_some();
                let mut jobs = vec![first];
                let mut count = jobs[0].0.len();
                // Relaxed records wait a little to share an fsync, unless someone is waiting.
                let deadline = std::time::Instant::now() + RELAXED_WAIT;
                while count < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(j) => {
                            urgent |= j.1.is_some();
                            count += j.0.len();
                            jobs.push(j);
                        }
                        Err(_) if !urgent && std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_micros(500));
                        }
                        Err(_) => break,
                    }
                }
                let sizes: Vec<usize> = jobs.iter().map(|j| j.0.len()).collect();
                let (entries, waiters): (Vec<Vec<Entry>>, Vec<Option<oneshot::Sender<_>>>) = jobs.into_iter().unzip();
                match writer.append(entries.into_iter().flatten().collect()) {
                    Ok(seqs) => {
                        let mut it = seqs.into_iter();
                        for (w, n) in waiters.into_iter().zip(sizes) {
                            let mine: Vec<u64> = it.by_ref().take(n).collect();
                            if let Some(w) = w {
                                let _ = w.send(Ok(mine));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!("audit write failed: {e}");
                        for w in waiters.into_iter().flatten() {
                            let _ = w.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the audit thread: {e}");
        }
        Journal { tx }
    }

    /// Write `entries` and their store writes; returns once they are durable.
    pub async fn commit(&self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((entries, Some(tx))).map_err(|_| AuditError::Stopped)?;
        match rx.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(AuditError::Io { path: AUDIT_FILE.into(), source: std::io::Error::other(e) }),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Record without waiting (reads, refusals: not changes): the entry shares the next fsync,
    /// at most a few milliseconds later. Failures are logged by the journal.
    pub fn record_relaxed(&self, entry: Entry) {
        if entry.batch.is_empty() {
            let _ = self.tx.send((vec![entry], None));
        } else {
            tracing::error!("a record with store writes must be committed, not relaxed; dropped");
        }
    }

    /// [`Journal::commit`] of one entry.
    pub async fn record(&self, entry: Entry) -> Result<u64, AuditError> {
        self.commit(vec![entry]).await.map(|s| s.first().copied().unwrap_or(0))
    }
}

// === reading ===

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub records: u64,
    pub head: String,
    /// Records whose MAC was checked (0 when no key was given).
    pub authenticated: u64,
    /// Records from before records were authenticated (all at the start of the log).
    pub legacy: u64,
    /// Whether the head anchor was found and matched.
    pub anchored: bool,
}

/// A broken chain: the first bad record and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at line {line} (seq {seq}): {reason}")]
pub struct ChainError {
    pub line: usize,
    pub seq: u64,
    pub reason: String,
}

/// Check the whole log at `path`: the chain, and with `key` every record's MAC (once the log
/// has an authenticated record, every later one must be) and the head anchor next to it (a log
/// that ends before its anchor was truncated).
pub fn verify(path: &Path, key: Option<&MacKey>) -> Result<Result<Verified, ChainError>, AuditError> {
    let io = |source| AuditError::Io { path: path.display().to_string(), source };
    let rd = BufReader::new(File::open(path).map_err(io)?);
    let mut prev_hash = GENESIS.to_string();
    let mut prev_seq = 0u64;
    let (mut authenticated, mut legacy) = (0u64, 0u64);
    // The head anchor, read first (it may only lag the log): the hash seen at its seq.
    let head: Option<Head> = match (key, path.parent()) {
        (Some(key), Some(dir)) => match std::fs::read(dir.join(HEAD_FILE)) {
            Ok(bytes) => match serde_json::from_slice::<Head>(&bytes).ok().filter(|h| h.authentic(key)) {
                Some(h) => Some(h),
                None => {
                    return Ok(Err(ChainError { line: 0, seq: 0, reason: format!("{HEAD_FILE} is not authenticated by this estate's master key") }))
                }
            },
            Err(_) => None,
        },
        _ => None,
    };
    let mut at_head: Option<String> = None;
    for (i, line) in rd.split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        let n = i + 1;
        if let Some(key) = key {
            match line_mac(key, &line) {
                Some(true) => authenticated += 1,
                Some(false) => {
                    return Ok(Err(ChainError {
                        line: n,
                        seq: prev_seq + 1,
                        reason: "its MAC does not match: the record was written or altered without the master key".into(),
                    }))
                }
                None if authenticated == 0 => legacy += 1,
                None => {
                    return Ok(Err(ChainError {
                        line: n,
                        seq: prev_seq + 1,
                        reason: "it carries no MAC after authenticated records: it was added without the master key".into(),
                    }))
                }
            }
        }
        let rec: Record = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => return Ok(Err(ChainError { line: n, seq: prev_seq + 1, reason: format!("not a record: {e}") })),
        };
        if rec.seq != prev_seq + 1 {
            return Ok(Err(ChainError {
                line: n,
                seq: rec.seq,
                reason: format!("expected seq {} (records deleted or reordered)", prev_seq + 1),
            }));
        }
        if rec.prev != prev_hash {
            return Ok(Err(ChainError {
                line: n,
                seq: rec.seq,
                reason: if n == 1 {
                    "the first record does not start the chain".into()
                } else {
                    format!("prev does not match the hash of line {} (that record was altered, or this one)", n - 1)
                },
            }));
        }
        prev_hash = crypto::sha256_hex(&line);
        prev_seq = rec.seq;
        if head.as_ref().is_some_and(|h| h.seq == prev_seq) {
            at_head = Some(prev_hash.clone());
        }
    }
    let mut anchored = false;
    if let Some(head) = head {
        {
            if head.seq > prev_seq {
                return Ok(Err(ChainError {
                    line: prev_seq as usize + 1,
                    seq: prev_seq + 1,
                    reason: format!("the log ends at seq {prev_seq} but its head anchor says {}: records were removed from the end", head.seq),
                }));
            }
            if head.seq > 0 && at_head.as_deref() != Some(head.hash.as_str()) {
                return Ok(Err(ChainError { line: head.seq as usize, seq: head.seq, reason: "the record at the head anchor was replaced".into() }));
            }
            anchored = true;
        }
    }
    Ok(Ok(Verified { records: prev_seq, head: prev_hash, authenticated, legacy, anchored }))
}

/// The last `n` records.
pub fn tail(path: &Path, n: usize) -> Result<Vec<Record>, AuditError> {
    let io = |source| AuditError::Io { path: path.display().to_string(), source };
    let rd = BufReader::new(File::open(path).map_err(io)?);
    let mut ring = std::collections::VecDeque::with_capacity(n.min(10_000));
    for (i, line) in rd.lines().enumerate() {
        let line = line.map_err(io)?;
        let rec: Record = serde_json::from_str(&line).map_err(|e| AuditError::Damaged {
            path: path.display().to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        if ring.len() == n {
            ring.pop_front();
        }
        if n > 0 {
            ring.push_back(rec);
        }
    }
    Ok(ring.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::SledStore;

    fn setup() -> (tempfile::TempDir, Arc<dyn Store>, SharedClock) {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&d.path().join("store")).unwrap());
        (d, store, Arc::new(ManualClock::new(1_780_000_000)))
    }

    fn key() -> MacKey {
        crate::crypto::MasterKey::from_hex(&"11".repeat(32), "test").unwrap().derive(AUDIT_KEY_LABEL)
    }

    fn entry(i: u32) -> Entry {
        let mut b = Batch::new();
        b.put(Space::Identities, format!("U{i}"), serde_json::to_vec(&serde_json::json!({"n": i})).unwrap());
        Entry::ok("spiffe://td/tillit/admin/admin", "enroll", &format!("svc-{i}")).batch(b)
    }

    #[test]
    fn appends_chain_and_apply_after_the_record() {
        let (d, store, clock) = setup();
        let mut w = Writer::open(&d.path().join("audit"), store.clone(), clock, key()).unwrap();
        assert_eq!(w.append(vec![entry(1), entry(2)]).unwrap(), vec![1, 2]);
        assert_eq!(w.append(vec![entry(3)]).unwrap(), vec![3]);
        assert_eq!(store.count(Space::Identities).unwrap(), 3);
        let path = d.path().join("audit").join(AUDIT_FILE);
        let v = verify(&path, Some(&key())).unwrap().unwrap();
        assert_eq!(v.records, 3);
        let t = tail(&path, 2).unwrap();
        assert_eq!(t.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(t[1].redo[0].key, "U3");
    }

    #[test]
    fn verify_names_edited_deleted_and_reordered_records() {
        let (d, store, clock) = setup();
        let dir = d.path().join("audit");
        let mut w = Writer::open(&dir, store, clock, key()).unwrap();
        w.append((1..=5).map(entry).collect()).unwrap();
        let path = dir.join(AUDIT_FILE);
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();

        let edited = original.replacen("svc-3", "svc-X", 1);
        std::fs::write(&path, &edited).unwrap();
        let e = verify(&path, Some(&key())).unwrap().unwrap_err();
        assert_eq!((e.line, e.seq), (3, 3), "the edited record itself is named: {e}");
        assert!(e.reason.contains("MAC"));
        // Without the key, the chain names the next record.
        let e = verify(&path, None).unwrap().unwrap_err();
        assert_eq!((e.line, e.seq), (4, 4), "{e}");
        assert!(e.reason.contains("line 3"));

        let deleted: String = lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect();
        std::fs::write(&path, deleted).unwrap();
        let e = verify(&path, Some(&key())).unwrap().unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("expected seq 3"), "{e}");

        let mut re = lines.clone();
        re.swap(1, 2);
        std::fs::write(&path, re.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let e = verify(&path, Some(&key())).unwrap().unwrap_err();
        assert_eq!(e.line, 2);

        std::fs::write(&path, &original).unwrap();
        assert_eq!(verify(&path, Some(&key())).unwrap().unwrap().records, 5);
    }

    #[test]
    fn replays_records_the_store_missed_and_drops_a_torn_line() {
        let (d, store, clock) = setup();
        let dir = d.path().join("audit");
        {
            let mut w = Writer::open(&dir, store.clone(), clock.clone(), key()).unwrap();
            w.append(vec![entry(1)]).unwrap();
        }
        // Simulate a crash after the log write, halfway through applying a record (its writes are
        // applied in order, the checkpoint last): append a valid next record by hand, apply only
        // its first write, and add half a line.
        let path = dir.join(AUDIT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        let rec = Record {
            seq: 2,
            time: "t".into(),
            time_unix: 0,
            actor: "a".into(),
            action: "enroll".into(),
            target: "svc-2".into(),
            outcome: "ok".into(),
            detail: None,
            redo: vec![
                RedoOp { space: "identities".into(), key: "U2".into(), value: Some(serde_json::json!({"n": 2})) },
                RedoOp { space: "identities".into(), key: "U1".into(), value: None },
            ],
            prev: crypto::sha256_hex(last.as_bytes()),
            mac: None,
        };
        store.apply_in_order(batch_of(&rec.redo[..1])).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&authenticated_line(&key(), &rec).unwrap()).unwrap();
        f.write_all(b"\n").unwrap();
        write!(f, "{{\"seq\":3,\"tim").unwrap();
        drop(f);
        assert!(store.get(Space::Identities, "U1").unwrap().is_some(), "the crash left the group half applied");
        let mut w = Writer::open(&dir, store.clone(), clock, key()).unwrap();
        assert!(store.get(Space::Identities, "U2").unwrap().is_some(), "replayed");
        assert!(store.get(Space::Identities, "U1").unwrap().is_none(), "the rest of the group replayed");
        assert_eq!(w.append(vec![entry(3)]).unwrap(), vec![3]);
        assert_eq!(verify(&path, Some(&key())).unwrap().unwrap().records, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_journal_groups_concurrent_commits() {
        let (d, store, clock) = setup();
        let j = Journal::start(Writer::open(&d.path().join("audit"), store.clone(), clock, key()).unwrap());
        let mut tasks = vec![];
        for i in 0..100 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move { j.record(entry(i)).await.unwrap() }));
        }
        let mut seqs: Vec<u64> = vec![];
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
        assert_eq!(store.count(Space::Identities).unwrap(), 100);
        assert_eq!(verify(&d.path().join("audit").join(AUDIT_FILE), Some(&key())).unwrap().unwrap().records, 100);
    }

    /// With write access to the data dir but not the master key: a record appended (chained
    /// correctly, carrying redo ops that relabel an identity) is never applied, and verify names
    /// it; so is a record re-chained after a deletion, and a truncated end.
    #[test]
    fn records_without_the_master_key_are_refused_and_truncation_is_named() {
        let (d, store, clock) = setup();
        let dir = d.path().join("audit");
        {
            let mut w = Writer::open(&dir, store.clone(), clock.clone(), key()).unwrap();
            w.append((1..=3).map(entry).collect()).unwrap();
        }
        let path = dir.join(AUDIT_FILE);
        let original = std::fs::read_to_string(&path).unwrap();
        let last = original.lines().last().unwrap();
        let forged = Record {
            seq: 4,
            time: "t".into(),
            time_unix: 0,
            actor: "tillit".into(),
            action: "enroll".into(),
            target: "x".into(),
            outcome: "ok".into(),
            detail: None,
            redo: vec![RedoOp { space: "identities".into(), key: "U1".into(), value: Some(serde_json::json!({"tenant": "other"})) }],
            prev: crypto::sha256_hex(last.as_bytes()),
            mac: None,
        };
        // 1. Unauthenticated, and 2. MACed under another key: neither is applied at start.
        let other = crate::crypto::MasterKey::from_hex(&"22".repeat(32), "x").unwrap().derive(AUDIT_KEY_LABEL);
        for line in [serde_json::to_vec(&forged).unwrap(), authenticated_line(&other, &forged).unwrap()] {
            std::fs::write(&path, format!("{original}{}\n", String::from_utf8(line).unwrap())).unwrap();
            // The store has applied seq 3; the forged seq 4 would be replayed.
            let err = Writer::open(&dir, store.clone(), clock.clone(), key()).unwrap_err();
            assert!(err.to_string().contains("not authenticated"), "{err}");
            assert_eq!(store.get(Space::Identities, "U1").unwrap().map(|v| v.to_vec()), Some(serde_json::to_vec(&serde_json::json!({"n": 1})).unwrap()));
            let e = verify(&path, Some(&key())).unwrap().unwrap_err();
            assert_eq!(e.line, 4, "{e}");
            // The chain alone does not see it: that is why records are MACed.
            assert!(verify(&path, None).unwrap().is_ok());
        }
        // 3. A record deleted and the rest re-chained by hand: its successor's MAC fails.
        let lines: Vec<&str> = original.lines().collect();
        let mut third: Record = serde_json::from_str(lines[2]).unwrap();
        third.seq = 2;
        third.prev = crypto::sha256_hex(lines[0].as_bytes());
        let rechained = format!("{}\n{}\n", lines[0], serde_json::to_string(&third).unwrap());
        std::fs::write(&path, rechained).unwrap();
        let e = verify(&path, Some(&key())).unwrap().unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        // 4. The last record cut off: the chain and MACs hold, the head anchor names it.
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        let e = verify(&path, Some(&key())).unwrap().unwrap_err();
        assert!(e.reason.contains("head anchor says 3"), "{e}");
        // ... and the store's checkpoint refuses to start on it.
        assert!(Writer::open(&dir, store.clone(), clock.clone(), key()).is_err());
        std::fs::write(&path, &original).unwrap();
        let ok = verify(&path, Some(&key())).unwrap().unwrap();
        assert_eq!((ok.records, ok.authenticated, ok.legacy, ok.anchored), (3, 3, 0, true));
    }
}
