//! The writer: appends groups of records with one fsync, keeps the chain head, the store's
//! checkpoint and the head anchor, and replays after a crash what the store had not applied.

use super::{authenticated_line, batch_of, line_mac, redo_of, AuditError, Entry, Head, Record, AUDIT_FILE, GENESIS, HEAD_FILE};
use crate::clock::{rfc3339, SharedClock};
use crate::crypto::{self, MacKey};
use crate::store::{Batch, Space, Store};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the store is up to, stored in the store with each applied group (MACed, so a store
/// edited without the master key cannot move it).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    /// The last record applied.
    pub seq: u64,
    /// Where the next record starts in the log file.
    pub offset: u64,
    /// The hash of the last record's line.
    pub hash: String,
    /// HMAC under the audit key (absent on checkpoints from before records were MACed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Checkpoint {
    /// A checkpoint at record `seq`, ending at byte `offset`, MACed by `key`.
    pub fn signed(key: &MacKey, seq: u64, offset: u64, hash: String) -> Self {
        let mac = key.mac_hex(format!("checkpoint:{seq}:{offset}:{hash}").as_bytes());
        Checkpoint { seq, offset, hash, mac: Some(mac) }
    }
    /// Whether `key` made it.
    pub fn authentic(&self, key: &MacKey) -> bool {
        self.mac.as_deref().is_some_and(|m| key.verify_hex(format!("checkpoint:{}:{}:{}", self.seq, self.offset, self.hash).as_bytes(), m))
    }
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
    /// When the head anchor was last written, and whether records came after it.
    head_at: Option<std::time::Instant>,
    head_behind: bool,
}

/// The head anchor is rewritten at most this often while records keep coming (a temp file and a
/// rename per group was 7% of `serve`'s CPU per renewal), and once the log is idle
/// ([`super::Append::idle`]) or the journal stops.
const HEAD_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

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
        let cp: Checkpoint = crate::store::get_json(store.as_ref(), Space::Meta, super::FILE_CHECKPOINT_KEY)?.unwrap_or(Checkpoint {
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
            Writer {
                path: path.clone(),
                file,
                store,
                clock,
                seq: cp.seq,
                hash: cp.hash.clone(),
                offset: cp.offset,
                broken: false,
                key,
                head_at: None,
                head_behind: false,
            };
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
            b.put_json(Space::Meta, super::FILE_CHECKPOINT_KEY, &Checkpoint::signed(&self.key, self.seq, offset, self.hash.clone()))?;
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
        batch.put_json(Space::Meta, super::FILE_CHECKPOINT_KEY, &Checkpoint::signed(&self.key, seq, self.offset, self.hash.clone()))?;
        self.store.apply_in_order(batch)?;
        self.head_behind = true;
        if self.head_at.is_none_or(|t| t.elapsed() >= HEAD_EVERY) {
            self.write_head();
        }
        Ok(seqs)
    }

    /// Bring the head anchor up to the last record if it lags.
    pub fn settle_head(&mut self) {
        if self.head_behind {
            self.write_head();
        }
    }
}

impl Writer {
    /// Replace `head.json` (temp file, rename; not synced: it may lag the log after a crash,
    /// never lead it).
    fn write_head(&mut self) {
        let Some(dir) = self.path.parent() else { return };
        self.head_at = Some(std::time::Instant::now());
        self.head_behind = false;
        if let Err(e) = write_head(dir, &self.key, self.seq, &self.hash) {
            tracing::warn!("cannot update the audit head anchor: {e}");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.settle_head();
    }
}

/// Write the head anchor `dir/head.json` naming record `seq` (whose line hashes to `hash`).
pub fn write_head(dir: &Path, key: &MacKey, seq: u64, hash: &str) -> std::io::Result<()> {
    let head = Head::signed(key, seq, hash);
    let tmp = dir.join(format!(".{HEAD_FILE}.tmp"));
    serde_json::to_vec(&head)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|_| std::fs::rename(&tmp, dir.join(HEAD_FILE)))
}
