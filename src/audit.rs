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
//! first line's `prev` is 64 zeros. [`verify`] checks the whole chain and names the first bad
//! record; it reads the plain file, so it works while `serve` runs.

use crate::clock::{rfc3339, SharedClock};
use crate::crypto;
use crate::store::{Batch, Space, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// File name of the log inside `DATA/audit`.
pub const AUDIT_FILE: &str = "audit.jsonl";
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

/// Where the store is up to, stored in the store with each applied group.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Checkpoint {
    seq: u64,
    offset: u64,
    hash: String,
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
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Writer {
    /// Open `dir/audit.jsonl` (creating it), find the chain head, and replay records the store
    /// has not applied yet.
    pub fn open(dir: &Path, store: Arc<dyn Store>, clock: SharedClock) -> Result<Self, AuditError> {
        let path = dir.join(AUDIT_FILE);
        let io = |source| AuditError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let cp: Checkpoint = crate::store::get_json(store.as_ref(), Space::Meta, "audit_checkpoint")?.unwrap_or(Checkpoint {
            seq: 0,
            offset: 0,
            hash: GENESIS.into(),
        });
        let mut w = Writer { path: path.clone(), file, store, clock, seq: cp.seq, hash: cp.hash.clone(), offset: cp.offset, broken: false };
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
            b.put_json(Space::Meta, "audit_checkpoint", &Checkpoint { seq: self.seq, offset, hash: self.hash.clone() })?;
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
            };
            let line = serde_json::to_vec(&rec).map_err(|e| AuditError::Io {
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
        batch.put_json(Space::Meta, "audit_checkpoint", &Checkpoint { seq, offset: self.offset, hash: self.hash.clone() })?;
        self.store.apply_in_order(batch)?;
        Ok(seqs)
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
}

/// A broken chain: the first bad record and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at line {line} (seq {seq}): {reason}")]
pub struct ChainError {
    pub line: usize,
    pub seq: u64,
    pub reason: String,
}

/// Check the whole chain of the log at `path`.
pub fn verify(path: &Path) -> Result<Result<Verified, ChainError>, AuditError> {
    let io = |source| AuditError::Io { path: path.display().to_string(), source };
    let rd = BufReader::new(File::open(path).map_err(io)?);
    let mut prev_hash = GENESIS.to_string();
    let mut prev_seq = 0u64;
    for (i, line) in rd.split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        let n = i + 1;
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
    }
    Ok(Ok(Verified { records: prev_seq, head: prev_hash }))
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

    fn entry(i: u32) -> Entry {
        let mut b = Batch::new();
        b.put(Space::Identities, format!("U{i}"), serde_json::to_vec(&serde_json::json!({"n": i})).unwrap());
        Entry::ok("spiffe://td/tillit/admin/admin", "enroll", &format!("svc-{i}")).batch(b)
    }

    #[test]
    fn appends_chain_and_apply_after_the_record() {
        let (d, store, clock) = setup();
        let mut w = Writer::open(&d.path().join("audit"), store.clone(), clock).unwrap();
        assert_eq!(w.append(vec![entry(1), entry(2)]).unwrap(), vec![1, 2]);
        assert_eq!(w.append(vec![entry(3)]).unwrap(), vec![3]);
        assert_eq!(store.count(Space::Identities).unwrap(), 3);
        let path = d.path().join("audit").join(AUDIT_FILE);
        let v = verify(&path).unwrap().unwrap();
        assert_eq!(v.records, 3);
        let t = tail(&path, 2).unwrap();
        assert_eq!(t.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(t[1].redo[0].key, "U3");
    }

    #[test]
    fn verify_names_edited_deleted_and_reordered_records() {
        let (d, store, clock) = setup();
        let dir = d.path().join("audit");
        let mut w = Writer::open(&dir, store, clock).unwrap();
        w.append((1..=5).map(entry).collect()).unwrap();
        let path = dir.join(AUDIT_FILE);
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();

        let edited = original.replacen("svc-3", "svc-X", 1);
        std::fs::write(&path, &edited).unwrap();
        let e = verify(&path).unwrap().unwrap_err();
        assert_eq!((e.line, e.seq), (4, 4), "{e}");
        assert!(e.reason.contains("line 3"));

        let deleted: String = lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect();
        std::fs::write(&path, deleted).unwrap();
        let e = verify(&path).unwrap().unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("expected seq 3"), "{e}");

        let mut re = lines.clone();
        re.swap(1, 2);
        std::fs::write(&path, re.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let e = verify(&path).unwrap().unwrap_err();
        assert_eq!(e.line, 2);

        std::fs::write(&path, &original).unwrap();
        assert_eq!(verify(&path).unwrap().unwrap().records, 5);
    }

    #[test]
    fn replays_records_the_store_missed_and_drops_a_torn_line() {
        let (d, store, clock) = setup();
        let dir = d.path().join("audit");
        {
            let mut w = Writer::open(&dir, store.clone(), clock.clone()).unwrap();
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
        };
        store.apply_in_order(batch_of(&rec.redo[..1])).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{}", serde_json::to_string(&rec).unwrap()).unwrap();
        write!(f, "{{\"seq\":3,\"tim").unwrap();
        drop(f);
        assert!(store.get(Space::Identities, "U1").unwrap().is_some(), "the crash left the group half applied");
        let mut w = Writer::open(&dir, store.clone(), clock).unwrap();
        assert!(store.get(Space::Identities, "U2").unwrap().is_some(), "replayed");
        assert!(store.get(Space::Identities, "U1").unwrap().is_none(), "the rest of the group replayed");
        assert_eq!(w.append(vec![entry(3)]).unwrap(), vec![3]);
        assert_eq!(verify(&path).unwrap().unwrap().records, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_journal_groups_concurrent_commits() {
        let (d, store, clock) = setup();
        let j = Journal::start(Writer::open(&d.path().join("audit"), store.clone(), clock).unwrap());
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
        assert_eq!(verify(&d.path().join("audit").join(AUDIT_FILE)).unwrap().unwrap().records, 100);
    }
}
