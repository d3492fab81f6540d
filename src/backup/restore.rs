//! Restoring a backup into a new data dir ([`restore`]): checked whole first, then written into
//! a staging dir beside the target (checked again as it is written) and renamed into place, so
//! a failure at any point leaves nothing behind.
//!
//! The restored data dir always keeps its records in sled, whatever the backup was taken from:
//! a backup of a JetStream estate gets `store.backend = "sled"` (its other settings kept), and
//! `tillit store migrate --to jetstream` moves it into an empty bucket afterwards (records and
//! audit chain, checked record by record). One way in, already tested, rather than a second
//! writer of buckets and journals.

use super::{read, BackupError, Item, Verified};
use crate::audit::{Checkpoint, GENESIS};
use crate::crypto::MasterKey;
use crate::fsutil::{self, Replace, WriteDirError, PRIVATE, PRIVATE_DIR};
use crate::layout::DataDir;
use crate::store::{Batch, SledStore, Space, Store};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Records written to the new store per batch.
const CHUNK: usize = 256;
/// How far past the last sequence the backup knows of the hub's new event stream starts, by
/// default: room for the events published between the backup and its restore, which agents
/// may have applied (an agent never applies a sequence at or below one it applied).
pub const EVENTS_GAP: u64 = 1_000_000;

/// What [`restore`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub verified: Verified,
    /// The new data dir.
    pub dir: PathBuf,
    /// Whether `master.key` was written into it.
    pub master_key_written: bool,
    /// Whether its config was switched to the sled store (a backup of a JetStream estate).
    pub switched_to_sled: bool,
    /// The sequence the hub's new event stream starts at.
    pub events_first_seq: u64,
}

/// Restore the backup `file` into `target` (missing or an empty directory) with `master`;
/// `master_key_file`: also write it as the new data dir's `master.key`. The hub's new event
/// stream starts `events_gap` past every sequence the backup knows ([`EVENTS_GAP`]).
pub fn restore(file: &Path, target: &Path, master: &MasterKey, master_key_file: bool, events_gap: u64) -> Result<Restored, BackupError> {
    let not_empty = || BackupError::NotEmpty { path: target.display().to_string() };
    if !fsutil::is_absent_or_empty_dir(target).map_err(|_| not_empty())? {
        return Err(not_empty());
    }
    let to = std::path::absolute(target).map_err(|source| BackupError::Io { path: target.display().to_string(), source })?;
    // Everything is checked before anything is written.
    let checked = read(file, master, |_| Ok(()))?;
    let filled = fsutil::write_dir_atomic(target, "restore", Replace::IfEmpty, |stage| fill(file, &DataDir::new(stage), &to, master, (master_key_file, events_gap), &checked));
    let (verified, events_first_seq) = filled.map_err(|e| match e {
        WriteDirError::Fill(e) => e,
        WriteDirError::NotEmpty { .. } => not_empty(),
        WriteDirError::Io { path, source, .. } => BackupError::Io { path: path.display().to_string(), source },
    })?;
    Ok(Restored {
        switched_to_sled: verified.header.store != "sled",
        verified,
        dir: target.to_path_buf(),
        master_key_written: master_key_file,
        events_first_seq,
    })
}

/// Write the data dir into the staging dir `stage` (renamed to `to` afterwards), reading (and
/// checking) the backup again.
fn fill(file: &Path, stage: &DataDir, to: &Path, master: &MasterKey, (master_key_file, events_gap): (bool, u64), checked: &Verified) -> Result<(Verified, u64), BackupError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| BackupError::Io { path: p.display().to_string(), source }
    };
    let key = master.derive(crate::audit::AUDIT_KEY_LABEL);
    fsutil::create_dir(&stage.store(), PRIVATE_DIR).map_err(io(&stage.store()))?;
    fsutil::create_dir(&stage.audit(), PRIVATE_DIR).map_err(io(&stage.audit()))?;
    let store = SledStore::open(&stage.store())?;
    let log_path = stage.audit_log();
    let mut log = std::io::BufWriter::new(
        std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().write(true).create_new(true), PRIVATE).open(&log_path).map_err(io(&log_path))?,
    );
    let applied = checked.manifest.audit.applied;
    let mut batch = Batch::new();
    let (mut offset, mut at_applied) = (0u64, None::<(u64, String)>);
    let mut agents_seq = 0u64;
    let jetstream = checked.header.store != "sled";
    let verified = read(file, master, |item| {
        match item {
            Item::Record { space, key, value } => {
                if space == Space::Sites && key.starts_with(crate::estate::sites::AGENT_PREFIX) {
                    if let Ok(a) = serde_json::from_slice::<crate::estate::sites::AgentStatus>(&value) {
                        agents_seq = agents_seq.max(a.last_seq);
                    }
                }
                batch.put(space, key, value);
                if batch.ops.len() >= CHUNK {
                    store.apply(std::mem::take(&mut batch))?;
                }
            }
            Item::File { path, mode, data } => {
                // A JetStream estate's store access means nothing to a sled one.
                if jetstream && stage.root().join(&path) == stage.store_access() {
                    return Ok(());
                }
                let at = stage.root().join(&path);
                if let Some(parent) = at.parent() {
                    fsutil::create_dir(parent, PRIVATE_DIR).map_err(io(parent))?;
                }
                let data = match path.extension() == Some("conf".as_ref()) {
                    true => moved_paths(&data, &checked.header.data_dir, to),
                    false => data,
                };
                fsutil::write_atomic(&at, &data, mode).map_err(io(&at))?;
            }
            Item::Audit { line, seq } => {
                log.write_all(line).and_then(|_| log.write_all(b"\n")).map_err(io(&log_path))?;
                offset += line.len() as u64 + 1;
                if seq == applied {
                    at_applied = Some((offset, crate::crypto::sha256_hex(line)));
                }
            }
        }
        Ok(())
    })?;
    // The same file twice: the second reading must be the first one's.
    if verified.sha256 != checked.sha256 {
        return Err(BackupError::Altered { path: file.display().to_string() });
    }
    // Where the store is up to in the log: the restored `serve` replays the records after it.
    if let Some((offset, hash)) = at_applied {
        batch.put_json(Space::Meta, crate::audit::FILE_CHECKPOINT_KEY, &Checkpoint::signed(&key, applied, offset, hash))?;
    }
    // The hub's new event stream starts after every sequence an agent may have applied.
    let events_first_seq = verified.manifest.events_last_seq.unwrap_or(0).max(agents_seq).saturating_add(events_gap.max(1));
    batch.put_json(Space::Meta, crate::server::stream::EVENTS_FIRST_SEQ, &events_first_seq)?;
    store.apply(batch)?;
    store.sync()?;
    drop(store);
    let log = log.into_inner().map_err(|e| BackupError::Io { path: log_path.display().to_string(), source: e.into_error() })?;
    log.sync_all().map_err(io(&log_path))?;
    let audit = &verified.manifest.audit;
    if audit.records > 0 {
        crate::audit::write_head(&stage.audit(), &key, audit.records, &audit.head).map_err(io(&stage.audit()))?;
    } else {
        debug_assert_eq!(audit.head, GENESIS);
    }
    if jetstream {
        let path = stage.config_file();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let mut raw: crate::config::RawConfig = toml::from_str(&text)
            .map_err(|e| crate::config::ConfigError::Parse { path: path.display().to_string(), message: e.message().to_string() })?;
        raw.store.backend = "sled".into();
        let config = crate::config::Config::from_raw(raw)?;
        fsutil::write_atomic(&path, config.to_toml().as_bytes(), fsutil::PUBLIC).map_err(io(&path))?;
    }
    if master_key_file {
        let mut hex = master.to_hex();
        hex.push('\n');
        fsutil::write_atomic(&stage.master_key(), hex.as_bytes(), PRIVATE).map_err(io(&stage.master_key()))?;
    }
    Ok((verified, events_first_seq))
}

/// A nats-server config's paths into the old data dir `from` (quoted, absolute: how
/// [`crate::natsconf`] writes them) moved into `to`.
pub(super) fn moved_paths(conf: &[u8], from: &str, to: &Path) -> zeroize::Zeroizing<Vec<u8>> {
    let (Ok(text), false) = (std::str::from_utf8(conf), from.is_empty()) else { return zeroize::Zeroizing::new(conf.to_vec()) };
    let quoted = |p: &str| serde_json::to_string(&format!("{p}/")).map(|q| q.trim_end_matches('"').to_string());
    match (quoted(from), quoted(&to.display().to_string())) {
        (Ok(old), Ok(new)) => zeroize::Zeroizing::new(text.replace(&old, &new).into_bytes()),
        _ => zeroize::Zeroizing::new(conf.to_vec()),
    }
}
