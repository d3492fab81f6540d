//! `tillit backup --data-dir D --out FILE` and `tillit backup --verify FILE`.
//!
//! Taking one: on a sled store, a running `serve` is asked on `DATA/serve.sock` (it holds the
//! store's lock; the snapshot is taken there, writes held for the moment it is read); with no
//! `serve`, the store is opened here (refused if something else holds it). On a JetStream
//! store the bucket and the journal are read directly with the data dir's store access, with
//! or without replicas running. The file is written beside `--out` (0600), verified with the
//! master key when it is at hand, and renamed into place.

use crate::backup::{self, Verified};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StoreBackend};
use crate::crypto::MasterKey;
use crate::estate::Estate;
use crate::layout::DataDir;
use anyhow::Context;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["out", "verify"])))]
pub struct Args {
    /// The data dir to back up (with --verify: where master.key is, unless TILLIT_MASTER_KEY
    /// or --master-key gives it).
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Write the backup to this file (0600).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Check a backup without restoring it: format, MAC, counts, the audit chain; prints its
    /// manifest.
    #[arg(long, value_name = "FILE", conflicts_with = "force")]
    pub verify: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// A master.key file to use (TILLIT_MASTER_KEY wins; else DATA/master.key).
    #[arg(long, value_name = "FILE", env = "TILLIT_MASTER_KEY_FILE")]
    pub master_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if let Some(file) = &a.verify {
        let master = master_key(a.master_key.as_deref(), a.data_dir.as_deref())?;
        let v = tokio::task::block_in_place(|| backup::read(file, &master, |_| Ok(())))?;
        if !super::print_json(a.json, &v)? {
            println!("backup {} verifies: MAC, counts and audit chain", file.display());
            print_summary(&v);
        }
        return Ok(());
    }
    let (Some(out), Some(data_dir)) = (&a.out, &a.data_dir) else {
        anyhow::bail!("--out needs --data-dir (the data dir to back up)");
    };
    let dir = DataDir::new(data_dir);
    let config = Config::load(&dir.config_file())?;
    if out.exists() && !a.force {
        anyhow::bail!("{} exists; pass --force to replace it", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("backup");
    let tmp = parent.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let taken = take(&dir, &config, a.master_key.as_deref(), &tmp).await;
    let finished = taken.and_then(|via| {
        // Verified with the master key when it is at hand (serve may hold the only copy).
        let verified = match master_key(a.master_key.as_deref(), Some(data_dir)) {
            Ok(master) => Some(tokio::task::block_in_place(|| backup::read(&tmp, &master, |_| Ok(())))?),
            Err(e) => {
                eprintln!("note: the backup is not verified here ({e}); run `tillit backup --verify {}` where the master key is", out.display());
                None
            }
        };
        std::fs::rename(&tmp, out).with_context(|| format!("renaming the backup to {}", out.display()))?;
        crate::fsutil::sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
        Ok((via, verified))
    });
    let (via, verified) = match finished {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Some(v) = &verified {
        if super::print_json(a.json, v)? {
            return Ok(());
        }
    }
    println!("backup of {} written to {} ({via})", dir.root().display(), out.display());
    if let Some(v) = &verified {
        print_summary(v);
    }
    println!("keep the master key apart from it: the backup opens nothing without it");
    Ok(())
}

/// Take the backup into `tmp` (0600); how it was taken.
async fn take(dir: &DataDir, config: &Config, key_file: Option<&Path>, tmp: &Path) -> anyhow::Result<&'static str> {
    let mut file = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(file.write(true).create_new(true), 0o600);
    let mut file = file.open(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let via = match &config.store {
        StoreBackend::Sled => match std::os::unix::net::UnixStream::connect(dir.serve_socket()) {
            Ok(s) => {
                tokio::task::block_in_place(|| from_serve(s, &mut file))?;
                "taken by the running serve"
            }
            Err(_) => {
                tokio::task::block_in_place(|| offline(dir, config, key_file, &mut file))?;
                "serve not running: taken from the store directly"
            }
        },
        StoreBackend::JetStream { journal, bucket, replicas, .. } => {
            let master = master_key(key_file, Some(dir.root()))?;
            let (d, c, m, bucket, replicas) = (dir.clone(), config.clone(), master.clone(), bucket.clone(), *replicas);
            let store = tokio::task::spawn_blocking(move || crate::estate::open_bucket(&d, &c, &m, &bucket, replicas)).await??;
            let store: Arc<dyn crate::store::Store> = Arc::new(store);
            let estate = Estate::open_with(dir.clone(), config.clone(), store.clone(), master.clone(), Arc::new(SystemClock))?;
            let client = store.nats().context("the JetStream store has no connection")?;
            let taken = backup::snapshot::of_jetstream(store.as_ref(), client, journal, &estate.audit_key()).await?;
            let mut out = std::io::BufWriter::new(&mut file);
            tokio::task::block_in_place(|| backup::write(&mut out, &taken, dir, &master, estate.trust_domain(), SystemClock.now_unix()))?;
            out.flush()?;
            "read from the JetStream bucket and journal"
        }
    };
    file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    Ok(via)
}

/// Ask the running `serve` on its socket and copy its answer.
fn from_serve(mut s: std::os::unix::net::UnixStream, file: &mut std::fs::File) -> anyhow::Result<()> {
    writeln!(s, "{}", serde_json::json!({ "type": backup::TYPE_REQUEST })).context("asking serve for a backup")?;
    let mut rd = std::io::BufReader::with_capacity(1 << 20, s.take(backup::MAX_BACKUP));
    let mut first = Vec::new();
    rd.by_ref().take(backup::MAX_LINE as u64).read_until(b'\n', &mut first).context("reading serve's answer")?;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&first) {
        if v["type"] == backup::TYPE_ERROR {
            anyhow::bail!("serve refused the backup: {}", v["message"].as_str().unwrap_or("no reason given"));
        }
    }
    if first.is_empty() {
        anyhow::bail!("serve closed the backup socket without answering");
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&first)?;
    std::io::copy(&mut rd, &mut w).context("receiving the backup from serve")?;
    w.flush()?;
    Ok(())
}

/// Open the sled store here (nobody else may hold it) and write the backup.
fn offline(dir: &DataDir, config: &Config, key_file: Option<&Path>, file: &mut std::fs::File) -> anyhow::Result<()> {
    let master = master_key(key_file, Some(dir.root()))?;
    let store = match crate::store::SledStore::open(&dir.store()) {
        Ok(s) => s,
        Err(crate::store::StoreError::Locked { path }) => anyhow::bail!(
            "the store {path} is held by another process but no serve answers on {}: is `tillit serve` running from an older tillit? stop it, or upgrade it and try again",
            dir.serve_socket().display()
        ),
        Err(e) => return Err(e.into()),
    };
    let store: Arc<dyn crate::store::Store> = Arc::new(store);
    let estate = Estate::open_with(dir.clone(), config.clone(), store.clone(), master.clone(), Arc::new(SystemClock))?;
    let taken = backup::snapshot::of_sled(store.as_ref(), dir.audit_log(), &estate.audit_key(), false, None)?;
    let mut out = std::io::BufWriter::new(file);
    backup::write(&mut out, &taken, dir, &master, estate.trust_domain(), SystemClock.now_unix())?;
    out.flush()?;
    Ok(())
}

/// The master key: TILLIT_MASTER_KEY, else `key_file`, else `data_dir/master.key`.
pub(crate) fn master_key(key_file: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<MasterKey> {
    if std::env::var_os(crate::crypto::MASTER_KEY_ENV).is_some() {
        return Ok(MasterKey::load(Path::new("."))?);
    }
    match (key_file, data_dir) {
        (Some(f), _) => Ok(MasterKey::load_file(f)?),
        (None, Some(d)) => Ok(MasterKey::load(d)?),
        (None, None) => anyhow::bail!("the master key is needed: set TILLIT_MASTER_KEY, or pass --master-key FILE or --data-dir DATA"),
    }
}

/// The manifest, for people.
pub(crate) fn print_summary(v: &Verified) {
    let (h, m) = (&v.header, &v.manifest);
    println!("  estate {} ({} store), taken {} by tillit {}", h.trust_domain, h.store, crate::clock::rfc3339(h.created_at), h.tillit);
    let spaces: Vec<String> = m.records.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("{s} {n}")).collect();
    println!("  records: {} ({})", m.records_total(), spaces.join(", "));
    println!("  files:   {} ({} sealed, {} bytes)", m.files, m.sealed_files, m.file_bytes);
    println!("  audit:   {} records, head {}; the store applied through {}", m.audit.records, m.audit.head, m.audit.applied);
    if let Some(s) = m.events_last_seq {
        println!("  events:  last sequence {s}");
    }
    println!("  size:    {} bytes, sha256 {}", v.bytes, v.sha256);
}
