//! Taking what a backup holds: the store's records at one instant and the audit chain that goes
//! with them ([`Taken`]), from a sled store (in `serve`, or offline) or a JetStream bucket.

use super::{is_runtime_record, BackupError};
use crate::audit::{Checkpoint, StreamCheckpoint, FILE_CHECKPOINT_KEY, STREAM_CHECKPOINT_KEY};
use crate::crypto::MacKey;
use crate::store::{Snapshot, Space, Store};
use std::path::PathBuf;

/// Where the audit lines come from.
#[derive(Debug, Clone)]
pub enum AuditLines {
    /// The file log: its complete lines, up to byte `upto` when given.
    File { path: PathBuf, upto: Option<u64> },
    /// Lines read already (the journal stream).
    Lines(Vec<Vec<u8>>),
}

/// A snapshot ready to be written.
#[derive(Debug, Clone)]
pub struct Taken {
    /// `sled` or `jetstream`.
    pub store: &'static str,
    /// The records, runtime records left out.
    pub records: Snapshot,
    pub audit: AuditLines,
    /// The records reflect the chain up to this record.
    pub applied: u64,
    pub events_last_seq: Option<u64>,
}

/// The value of `meta/key` in a snapshot.
fn meta<'a>(records: &'a Snapshot, key: &str) -> Option<&'a [u8]> {
    records.iter().find(|(s, _)| *s == Space::Meta)?.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
}

fn without_runtime(mut records: Snapshot) -> Snapshot {
    for (space, recs) in records.iter_mut() {
        recs.retain(|(k, _)| !is_runtime_record(*space, k));
    }
    records
}

/// A sled store's snapshot and its file log. `online` (the store is `serve`'s, which keeps
/// appending): the log up to the store's checkpoint, the records' exact match. Offline (nobody
/// writes): every complete line, the records reflecting them up to the checkpoint (a `serve`
/// that stopped mid-group left the rest for the next start to replay; so does a restore).
pub fn of_sled(store: &dyn Store, audit_log: PathBuf, key: &MacKey, online: bool, events_last_seq: Option<u64>) -> Result<Taken, BackupError> {
    let records = store.snapshot()?;
    let cp = match meta(&records, FILE_CHECKPOINT_KEY) {
        None => None,
        Some(raw) => {
            let cp: Checkpoint = serde_json::from_slice(raw)
                .map_err(|e| BackupError::Source(format!("the store's audit checkpoint is damaged: {e}")))?;
            if cp.mac.is_some() && !cp.authentic(key) {
                return Err(BackupError::Source(
                    "the store's audit checkpoint is not authenticated by this master key (edited?); run `tillit audit verify`".into(),
                ));
            }
            Some(cp)
        }
    };
    let applied = cp.as_ref().map(|c| c.seq).unwrap_or(0);
    let upto = if online { Some(cp.map(|c| c.offset).unwrap_or(0)) } else { None };
    Ok(Taken { store: "sled", records: without_runtime(records), audit: AuditLines::File { path: audit_log, upto }, applied, events_last_seq })
}

/// A JetStream bucket's snapshot (the mirror at one instant) and the journal stream read after
/// it: every record whose changes the snapshot holds is in the journal read (changes are
/// applied after their record is appended). `applied` is the store's journal checkpoint: the
/// records after it are replayed by the restored control plane.
pub async fn of_jetstream(store: &dyn Store, client: async_nats::Client, journal: &str, key: &MacKey) -> Result<Taken, BackupError> {
    let records = store.snapshot()?;
    let applied = match meta(&records, STREAM_CHECKPOINT_KEY) {
        None => 0,
        Some(raw) => {
            let cp: StreamCheckpoint = serde_json::from_slice(raw)
                .map_err(|e| BackupError::Source(format!("the store's journal checkpoint is damaged: {e}")))?;
            if !cp.authentic(key) {
                return Err(BackupError::Source("the store's journal checkpoint is not authenticated by this master key (edited?)".into()));
            }
            cp.seq
        }
    };
    let events_last_seq = events_last_seq(client.clone()).await;
    let mut lines = Vec::new();
    let read = crate::audit::read_stream_lines(client, journal, key, u64::MAX, |line, _| lines.push(line.to_vec())).await?;
    if let Err(e) = read {
        return Err(BackupError::Source(format!("the journal does not verify: {e}; run `tillit audit verify`")));
    }
    Ok(Taken { store: "jetstream", records: without_runtime(records), audit: AuditLines::Lines(lines), applied, events_last_seq })
}

/// The hub event stream's last sequence, if the stream can be asked.
pub async fn events_last_seq(client: async_nats::Client) -> Option<u64> {
    let js = async_nats::jetstream::new(client);
    let ask = async {
        let mut s = js.get_stream(crate::subjects::EVENTS_STREAM).await.ok()?;
        s.info().await.ok().map(|i| i.state.last_sequence)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), ask).await.ok().flatten()
}
