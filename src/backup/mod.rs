//! Backups of an estate (`tillit backup`, `tillit restore`): one file that holds the store's
//! records, the data dir's files and the audit chain, authenticated by the master key.
//!
//! # Format (version 1)
//!
//! JSON lines, each a message that says what it is (`type`), in this order:
//!
//! 1. the header: `{"type":"io.tillit.v1.backup","format":1,"created_at":…,"trust_domain":…,
//!    "data_dir":…,"store":"sled"|"jetstream","tillit":"0.1.0","key_check":…}`;
//! 2. the store's records, space by space in key order:
//!    `{"type":"io.tillit.v1.backup.record","space":"identities","key":…,"value_b64":…}`. Values
//!    are as the store holds them: private keys and secret values stay sealed by the master key
//!    (bound to their `space/key`), everything else is public. Runtime records are left out
//!    ([`is_runtime_record`]);
//! 3. the data dir's files, in path order: `{"type":"io.tillit.v1.backup.file","path":…,
//!    "mode":384,"sealed":true,"data_b64":…}`. A private file (no group or other bits in its
//!    mode, or named like key material) is sealed with the master key, its path as associated
//!    data: the TLS keys, the admin's creds and xkey never appear in clear. What the backup
//!    leaves out is [`crate::layout::DataDir::not_backed_up`]; `master.key` is never in it;
//! 4. the audit chain, every record's line exactly as written:
//!    `{"type":"io.tillit.v1.backup.audit","line":…}`;
//! 5. the manifest ([`Manifest`]): records per space, files, audit records, the chain head and
//!    `applied` (the store's records reflect the chain up to that record: the restored
//!    control plane replays the rest, as after a crash), and the events stream's last sequence;
//! 6. the MAC: `{"type":"io.tillit.v1.backup.mac","sha256":…,"mac":…}`, the SHA-256 of every
//!    byte before this line and an HMAC-SHA256 of it under a key derived from the master key.
//!
//! The header's `key_check` (an HMAC of a constant under another derived key) tells a backup
//! made with another master key apart from an altered one. A reader (`read`) treats the file
//! as untrusted until the MAC matches: lines and the file are size-bounded, every line is
//! checked as it comes (order, counts, each sealed file opens, the audit chain and its MACs),
//! and a caller acts on what it saw only once `read` returned `Ok`.
//!
//! Consistency: the records are one [`crate::store::Store::snapshot`] (a state the store was
//! in), and the audit chain is the log as far as the store had applied it (sled, through a
//! running `serve`'s socket, [`crate::server`]) or at least as far (a store nobody writes; a
//! JetStream bucket read before the journal): a restored estate is the estate as a crash at
//! that instant would have left it.

mod read;
mod restore;
pub mod snapshot;
mod write;

pub use read::{read, Item, Verified};
pub use restore::{restore, Restored, EVENTS_GAP};
pub use snapshot::{AuditLines, Taken};
pub use write::write;

use crate::crypto::MasterKey;
use crate::store::Space;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format this tillit writes and reads.
pub const FORMAT: u32 = 1;
/// `type` of the header line.
pub const TYPE_HEADER: &str = "io.tillit.v1.backup";
/// `type` of a record line.
pub const TYPE_RECORD: &str = "io.tillit.v1.backup.record";
/// `type` of a file line.
pub const TYPE_FILE: &str = "io.tillit.v1.backup.file";
/// `type` of an audit line.
pub const TYPE_AUDIT: &str = "io.tillit.v1.backup.audit";
/// `type` of the manifest line.
pub const TYPE_MANIFEST: &str = "io.tillit.v1.backup.manifest";
/// `type` of the MAC line (the last).
pub const TYPE_MAC: &str = "io.tillit.v1.backup.mac";
/// `type` of what `tillit backup` asks a running `serve` on its socket.
pub const TYPE_REQUEST: &str = "io.tillit.v1.backup.request";
/// `type` of `serve`'s answer on its socket when it cannot take a backup.
pub const TYPE_ERROR: &str = "io.tillit.v1.backup.error";

/// What the backup MAC key is derived under.
const MAC_LABEL: &str = "tillit backup mac v1";
/// What the key check's key is derived under.
const KEY_CHECK_LABEL: &str = "tillit backup key check v1";
/// Longest line a reader takes (a record, a file, an audit line, base64 included).
pub const MAX_LINE: usize = 16 << 20;
/// Largest file of the data dir a backup takes (base64 and sealing must fit in a line).
pub const MAX_FILE: u64 = (MAX_LINE as u64 / 4) * 3 - 4096;
/// Largest backup a reader takes.
pub const MAX_BACKUP: u64 = 16 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a tillit backup (its first line is not a backup header)")]
    NotABackup { path: String },
    #[error("backup {path} is format {found}; this tillit reads format {FORMAT}")]
    Format { path: String, found: u32 },
    #[error("backup {path} was made with another master key; use the master key of the estate it was taken from (TILLIT_MASTER_KEY or --master-key)")]
    WrongKey { path: String },
    #[error("backup {path} is truncated: it ends before its MAC line (an interrupted write or copy?)")]
    Truncated { path: String },
    #[error("backup {path} was altered: its MAC does not match its content")]
    Altered { path: String },
    #[error("backup {path} is damaged at line {line}: {reason}")]
    Damaged { path: String, line: u64, reason: String },
    #[error("backup {path} is larger than {max} bytes; refused")]
    TooLarge { path: String, max: u64 },
    /// The estate cannot be backed up as it is.
    #[error("{0}")]
    Source(String),
    #[error("restore target {path} exists and is not empty; restore into a new or empty directory")]
    NotEmpty { path: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.display().to_string(), source }
}

/// The first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: u32,
    /// When the snapshot was taken (Unix seconds).
    pub created_at: i64,
    pub trust_domain: String,
    /// The data dir it was taken from (absolute): a restore moves the paths in the hub's
    /// nats-server configs from it to the new data dir.
    pub data_dir: String,
    /// The store it was taken from: `sled` or `jetstream`.
    pub store: String,
    /// The tillit version that wrote it.
    pub tillit: String,
    /// HMAC of a constant under a key derived from the master key: which key made it.
    pub key_check: String,
}

/// What a backup holds, counted by its writer and checked by its reader.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Records per space (every space named, 0 included).
    pub records: BTreeMap<String, u64>,
    /// Files of the data dir, and how many of them are sealed.
    pub files: u64,
    pub sealed_files: u64,
    /// Bytes of the files (before sealing).
    pub file_bytes: u64,
    pub audit: AuditSummary,
    /// The last sequence of the hub's event stream when the backup was taken, when known: a
    /// restored control plane starts its new stream after it (and after every agent's
    /// acknowledged progress), so agents never take a new event for one they applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_last_seq: Option<u64>,
}

impl Manifest {
    /// Records in all.
    pub fn records_total(&self) -> u64 {
        self.records.values().sum()
    }
}

/// The audit chain in a backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditSummary {
    /// Records (the last one's seq).
    pub records: u64,
    /// SHA-256 of the last record's line.
    pub head: String,
    /// The store's records reflect the chain up to this record.
    pub applied: u64,
}

/// One line after the header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Line {
    #[serde(rename = "io.tillit.v1.backup.record")]
    Record { space: String, key: String, value_b64: String },
    #[serde(rename = "io.tillit.v1.backup.file")]
    File { path: String, mode: u32, sealed: bool, data_b64: String },
    #[serde(rename = "io.tillit.v1.backup.audit")]
    Audit { line: String },
    #[serde(rename = "io.tillit.v1.backup.manifest")]
    Manifest(Manifest),
    #[serde(rename = "io.tillit.v1.backup.mac")]
    Mac { sha256: String, mac: String },
}

/// The key check of `master` (the header's `key_check`).
fn key_check(master: &MasterKey) -> String {
    master.derive(KEY_CHECK_LABEL).mac_hex(TYPE_HEADER.as_bytes())
}

/// The MAC of a backup whose bytes before the MAC line hash to `sha256_hex`.
fn content_mac(master: &MasterKey, sha256_hex: &str) -> String {
    master.derive(MAC_LABEL).mac_hex(format!("{TYPE_MAC}:{sha256_hex}").as_bytes())
}

/// The associated data a file is sealed under.
fn file_aad(path: &str) -> String {
    format!("backup-file/{path}")
}

/// Records that describe a running control plane rather than the estate, left out of a backup:
/// kept replies (they expire within minutes), the leader lease, and where the store is up to
/// in its journal (a restore writes its own checkpoint from the manifest's `applied`).
pub fn is_runtime_record(space: Space, key: &str) -> bool {
    space == Space::Replies
        || (space == Space::Meta
            && [
                crate::audit::FILE_CHECKPOINT_KEY,
                crate::audit::STREAM_CHECKPOINT_KEY,
                crate::estate::lease::LEASE_KEY,
                crate::server::stream::EVENTS_FIRST_SEQ,
            ]
            .contains(&key))
}

/// Whether a data dir file holds private material whatever its mode says (a key file someone
/// made world-readable is still sealed).
fn is_private_name(name: &str) -> bool {
    name == "key.pem" || [".creds", ".seed", ".key", ".sealed", ".token"].iter().any(|s| name.ends_with(s))
}

#[cfg(test)]
mod tests;
