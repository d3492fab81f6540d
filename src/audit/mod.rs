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

use crate::crypto::MacKey;
use crate::store::{Batch, Space, StoreError};
use serde::{Deserialize, Serialize};

mod journal;
mod read;
mod stream;
mod writer;
pub use journal::{Journal, Observer};
pub use read::{tail, tail_before, verify, ChainError, Verified};
pub use stream::{read_stream, read_stream_lines, tail_stream, stream_config, StreamCheckpoint, StreamWriter, APPLY_GRACE, CHECKPOINT_KEY as STREAM_CHECKPOINT_KEY};
pub use writer::{write_head, Checkpoint, Writer};

/// The record key in [`Space::Meta`] of the file log's checkpoint ([`Checkpoint`]): where the
/// store is up to in `audit.jsonl`.
pub const FILE_CHECKPOINT_KEY: &str = "audit_checkpoint";

/// Where the journal's records go: a local file ([`Writer`]) or a JetStream stream
/// ([`StreamWriter`]).
pub trait Append: Send + 'static {
    /// Append `entries` and apply their store writes, all or nothing.
    fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError>;
    /// Most entries in one append.
    fn max_group(&self) -> usize {
        MAX_GROUP
    }
    /// Nothing came for a while, or someone asked ([`Journal::settle`]): finish what was put off.
    fn idle(&mut self) {}
}

impl Append for Writer {
    fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
        Writer::append(self, entries)
    }
    fn idle(&mut self) {
        self.settle_head();
    }
}

impl Append for StreamWriter {
    fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
        StreamWriter::append(self, entries)
    }
    fn max_group(&self) -> usize {
        256
    }
}

/// File names of the log and of its head anchor inside `DATA/audit` (their home is [`crate::layout`]).
pub use crate::layout::{AUDIT_FILE, AUDIT_HEAD_FILE as HEAD_FILE};
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
    /// The data dir takes no more writes (full, read-only): nothing of the change was written.
    #[error("the data dir takes no more writes ({0})")]
    NoSpace(String),
    #[error("audit log {path} is damaged at line {line}: {reason}; run `tillit audit verify` and restore it from backup")]
    Damaged { path: String, line: usize, reason: String },
    #[error("audit log is not writable (an earlier write failed); no change is accepted until `tillit serve` restarts")]
    Broken,
    #[error("audit journal stopped")]
    Stopped,
    /// The journal could not be written now (its stream is electing a leader, NATS is away);
    /// nothing was recorded or changed.
    #[error("the journal is not writable right now: {0}")]
    Unavailable(String),
    /// Another replica changed the store first: the change must be computed again.
    #[error("another replica changed the estate at the same time; try again")]
    Conflict,
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

/// The chain checked one line at a time (a backup's audit lines, read without the file):
/// each line's MAC under the key (lines from before records were authenticated are accepted
/// only at the start), its seq and its `prev`.
#[derive(Debug, Clone)]
pub struct Chain {
    key: MacKey,
    /// The last record's seq (0: none yet).
    pub seq: u64,
    /// The hash of the last record's line ([`GENESIS`] before the first).
    pub hash: String,
    /// Records whose MAC was checked.
    pub authenticated: u64,
    /// Records from before records were authenticated.
    pub legacy: u64,
}

impl Chain {
    /// An empty chain checked under `key`.
    pub fn new(key: MacKey) -> Self {
        Chain { key, seq: 0, hash: GENESIS.into(), authenticated: 0, legacy: 0 }
    }

    /// Take the next line (without its newline); why not, if it does not follow.
    pub fn push(&mut self, line: &[u8]) -> Result<(), String> {
        let next = self.seq + 1;
        match line_mac(&self.key, line) {
            Some(true) => self.authenticated += 1,
            Some(false) => return Err(format!("record {next}: its MAC does not match (written or altered without the master key)")),
            None if self.authenticated == 0 => self.legacy += 1,
            None => return Err(format!("record {next}: it carries no MAC after authenticated records")),
        }
        let rec: Record = serde_json::from_slice(line).map_err(|e| format!("record {next}: not a record: {e}"))?;
        if rec.seq != next || rec.prev != self.hash {
            return Err(format!("record seq {} does not follow seq {} (deleted, reordered or altered)", rec.seq, self.seq));
        }
        self.seq = rec.seq;
        self.hash = crate::crypto::sha256_hex(line);
        Ok(())
    }
}

/// A record to write, with the store writes it stands for.
#[derive(Debug, Default, Clone)]
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
        "service_identities" => Some(Space::ServiceIdentities),
        "identity_order" => Some(Space::IdentityOrder),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SharedClock};
    use crate::crypto;
    use crate::store::{SledStore, Store};
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::Arc;

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

    fn head_seq(dir: &std::path::Path) -> u64 {
        let h: Head = serde_json::from_slice(&std::fs::read(dir.join(HEAD_FILE)).unwrap()).unwrap();
        assert!(h.authentic(&key()));
        h.seq
    }

    /// The head anchor is rewritten at most every HEAD_EVERY while groups keep coming, never
    /// names a record not yet written, and names the last one once the writer is idle or gone.
    #[test]
    fn the_head_anchor_lags_only_while_records_keep_coming() {
        let (d, store, clock) = setup();
        let dir = d.path().join("audit");
        let mut w = Writer::open(&dir, store.clone(), clock.clone(), key()).unwrap();
        w.append(vec![entry(1)]).unwrap();
        assert_eq!(head_seq(&dir), 1, "the first group writes it");
        for i in 2..=20 {
            w.append(vec![entry(i)]).unwrap();
            assert!(head_seq(&dir) <= u64::from(i));
        }
        assert!(head_seq(&dir) < 20, "groups in quick succession share one head write");
        w.settle_head();
        assert_eq!(head_seq(&dir), 20);
        w.append(vec![entry(21)]).unwrap();
        drop(w);
        assert_eq!(head_seq(&dir), 21, "written when the writer goes");
        let v = verify(&dir.join(AUDIT_FILE), Some(&key())).unwrap().unwrap();
        assert_eq!(v.records, 21);
    }

    /// A log of `groups` groups of 50 records (seq 1 to 50 × groups): its dir and file.
    fn log_of(groups: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let (d, store, clock) = setup();
        let mut w = Writer::open(&d.path().join("audit"), store, clock, key()).unwrap();
        for k in 0..groups {
            w.append((k * 50 + 1..=k * 50 + 50).map(entry).collect()).unwrap();
        }
        let path = d.path().join("audit").join(AUDIT_FILE);
        (d, path)
    }

    /// The tail is read backwards in chunks: across chunk boundaries, for more records than the
    /// log holds, for none, and for a log longer than one chunk.
    #[test]
    fn tail_reads_the_end_whatever_the_chunks() {
        let (_d, path) = log_of(40);
        assert!(std::fs::metadata(&path).unwrap().len() > 4 * 64 * 1024, "several chunks");
        for n in [0usize, 1, 7, 300, 1999, 2000, 5000] {
            let t = tail(&path, n).unwrap();
            let want: Vec<u64> = (2000u64.saturating_sub(n as u64) + 1..=2000).collect();
            assert_eq!(t.iter().map(|r| r.seq).collect::<Vec<_>>(), want, "n = {n}");
        }
    }

    /// A page before a sequence number: the `n` records just below it, also far back, at the
    /// start, and past the end.
    #[test]
    fn a_tail_pages_back_before_a_sequence_number() {
        let (_d, path) = log_of(20);
        let seqs = |n: usize, before: Option<u64>| tail_before(&path, n, before).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(3, None), vec![998, 999, 1000]);
        assert_eq!(seqs(3, Some(998)), vec![995, 996, 997]);
        assert_eq!(seqs(4, Some(20)), vec![16, 17, 18, 19]);
        assert_eq!(seqs(5, Some(3)), vec![1, 2], "only what is there");
        assert_eq!(seqs(2, Some(1)), Vec::<u64>::new());
        assert_eq!(seqs(2, Some(5000)), vec![999, 1000], "past the end: the newest");
        // Paging back from the end walks every record once.
        let (mut all, mut before) = (Vec::new(), None);
        loop {
            let page = seqs(130, before);
            let Some(first) = page.first().copied() else { break };
            all.splice(0..0, page);
            before = Some(first);
        }
        assert_eq!(all, (1..=1000).collect::<Vec<u64>>());
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
