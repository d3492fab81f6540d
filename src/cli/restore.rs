//! `tillit restore FILE --data-dir NEW`: a backup into a new data dir (sled store), checked
//! whole before anything is written, written beside NEW and renamed into place.

use crate::backup;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup file (`tillit backup --out`).
    pub file: PathBuf,
    /// The data dir to create: missing or empty.
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The estate's master.key file, also written into the new data dir (0600). Without it,
    /// TILLIT_MASTER_KEY gives the key and nothing is written.
    #[arg(long, value_name = "FILE", env = "TILLIT_MASTER_KEY_FILE")]
    pub master_key: Option<PathBuf>,
    /// How far past the last event sequence the backup knows the hub's new event stream
    /// starts: room for events agents applied after the backup was taken.
    #[arg(long, default_value_t = backup::EVENTS_GAP)]
    pub events_gap: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if !crate::fsutil::is_absent_or_empty_dir(&a.data_dir).unwrap_or(false) {
        return Err(backup::BackupError::NotEmpty { path: a.data_dir.display().to_string() }.into());
    }
    let from_env = std::env::var_os(crate::crypto::MASTER_KEY_ENV).is_some();
    if !from_env && a.master_key.is_none() {
        anyhow::bail!("the estate's master key is needed: pass --master-key FILE (written into the new data dir) or set TILLIT_MASTER_KEY");
    }
    let master = super::backup::master_key(a.master_key.as_deref(), None)?;
    let r = tokio::task::block_in_place(|| backup::restore(&a.file, &a.data_dir, &master, !from_env, a.events_gap))?;
    if super::print_json(a.json, &r)? {
        return Ok(());
    }
    println!("restored {} into {}", a.file.display(), r.dir.display());
    super::backup::print_summary(&r.verified);
    if r.switched_to_sled {
        println!("  the estate was on JetStream: the restored data dir keeps its records in sled (`tillit store migrate --to jetstream` moves them into an empty bucket)");
    }
    if !r.master_key_written {
        println!("  master.key not written: serve it TILLIT_MASTER_KEY");
    }
    println!("next: nats-server -c {}   then   tillit serve --data-dir {}", crate::layout::DataDir::new(&r.dir).server_conf().display(), r.dir.display());
    Ok(())
}
