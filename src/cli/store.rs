//! `tillit store migrate --to jetstream --data-dir D` and `tillit store replica --data-dir D --out D2`.

use crate::clock::SystemClock;
use crate::config::{Config, RawConfig, StoreBackend};
use crate::crypto::MasterKey;
use crate::estate::Estate;
use crate::layout::DataDir;
use crate::store::Store;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy a sled estate (records and audit chain) into JetStream, check it record by record,
    /// and switch the data dir to it; the sled store is left as it was. Refused while `serve`
    /// runs on the data dir; nats-server must run.
    Migrate(MigrateArgs),
    /// Make the data dir of one more `serve` replica: the config and the store access (and the
    /// master key file, unless TILLIT_MASTER_KEY provides it).
    Replica(ReplicaArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The backend to move to.
    #[arg(long, value_parser = ["jetstream"])]
    pub to: String,
    /// The KV bucket of the records.
    #[arg(long, default_value = "tillit")]
    pub bucket: String,
    /// The journal stream.
    #[arg(long, default_value = "TILLIT_JOURNAL")]
    pub journal: String,
    /// Replication of both (1 on one nats-server, 3 on a cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
}

#[derive(Debug, clap::Args)]
pub struct ReplicaArgs {
    /// The data dir of a replica (on a JetStream store).
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The data dir to create for the new replica.
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        StoreCommand::Migrate(m) => tokio::task::block_in_place(|| migrate(m)),
        StoreCommand::Replica(r) => replica(r),
    }
}

fn migrate(m: MigrateArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&m.data_dir);
    let text = std::fs::read_to_string(dir.config_file()).with_context(|| format!("reading {}", dir.config_file().display()))?;
    let mut raw: RawConfig = toml::from_str(&text).context("parsing the config")?;
    if Config::from_raw(raw.clone())?.store != StoreBackend::Sled {
        anyhow::bail!("{} is not on sled (store.backend = {:?}); nothing to migrate", dir.root().display(), raw.store.backend);
    }
    raw.store.backend = m.to.clone();
    raw.store.bucket = m.bucket.clone();
    raw.store.journal = m.journal.clone();
    raw.store.replicas = m.replicas;
    let target = Config::from_raw(raw)?;
    let master = MasterKey::load(dir.root())?;
    // Opening the sled estate takes its lock: refused while `serve` runs on this data dir.
    let estate = Estate::open(dir.clone(), Arc::new(SystemClock))?;
    // Minted from the sled estate, recorded in the bucket: the sled store is left as it was.
    let (access, serial) = estate.store_access(&m.bucket, crate::init::STORE_ACCESS_TTL)?;
    let (clock, key) = (estate.clock().clone(), estate.audit_key());
    drop(estate);
    access.write(&dir, &master)?;
    eprintln!("connecting to JetStream at {}", target.urls().join(", "));
    let js = crate::estate::open_bucket(&dir, &target, &master, &m.bucket, m.replicas)?;
    if js.count(crate::store::Space::Meta)? > 0 {
        anyhow::bail!("the KV bucket {} already holds an estate; migrate into an empty bucket (or point --bucket elsewhere)", m.bucket);
    }
    let copied = crate::estate::migrate_into(&dir, &js, &m.bucket)?;
    js.commit(serial)?;
    eprintln!("copied {} records into the KV bucket {} and checked them", copied.total(), m.bucket);
    let client = js.nats().context("the JetStream store has no connection")?;
    let js: Arc<dyn Store> = Arc::new(js);
    let (journal, replicas, file) = (m.journal.clone(), m.replicas, dir.audit_log());
    // The journal writer waits on NATS synchronously: on a thread of its own.
    let imported = std::thread::spawn(move || crate::audit::StreamWriter::open(client, &journal, replicas, js, clock, key, Some(file)).map(|_| ()))
        .join()
        .map_err(|_| anyhow::anyhow!("the journal import panicked"))?;
    imported?;
    crate::fsutil::write_atomic(&dir.config_file(), target.to_toml().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", dir.config_file().display()))?;
    println!("migrated {} to JetStream: bucket {}, journal {}, R{}", dir.root().display(), m.bucket, m.journal, m.replicas);
    println!("  the sled store in {} is left as it was (not used any more)", dir.store().display());
    println!("next: tillit serve --data-dir {}   (more replicas: tillit store replica --data-dir … --out …)", dir.root().display());
    Ok(())
}

fn replica(r: ReplicaArgs) -> anyhow::Result<()> {
    let (to, key_copied) = make_replica_dir(&DataDir::new(&r.data_dir), &r.out)?;
    println!("replica data dir {} made (config, store access{})", to.root().display(), if key_copied { ", master key" } else { "; give it TILLIT_MASTER_KEY" });
    println!("next: tillit serve --data-dir {} --http-addr HOST:PORT", to.root().display());
    Ok(())
}

/// Make `out` the data dir of one more replica of `from`'s estate; whether the master key file
/// was copied (not when TILLIT_MASTER_KEY gives it).
pub(crate) fn make_replica_dir(from: &DataDir, out: &std::path::Path) -> anyhow::Result<(DataDir, bool)> {
    let config = Config::load(&from.config_file())?;
    if config.store == StoreBackend::Sled {
        anyhow::bail!("{} keeps its records in sled: only one `serve` may use them; `tillit store migrate --to jetstream` first", from.root().display());
    }
    let master = MasterKey::load(from.root())?;
    // The store access must open with this master key before it is copied.
    crate::store::StoreAccess::read(from, &master)?;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", out.display());
    }
    let to = DataDir::new(out);
    crate::fsutil::create_dir(to.root(), 0o700).with_context(|| format!("creating {}", out.display()))?;
    std::fs::copy(from.config_file(), to.config_file())?;
    let access = std::fs::read(from.store_access())?;
    crate::fsutil::write_atomic(&to.store_access(), &access, crate::fsutil::PRIVATE)?;
    let key_copied = if from.master_key().exists() && std::env::var(crate::crypto::MASTER_KEY_ENV).is_err() {
        let k = std::fs::read(from.master_key())?;
        crate::fsutil::write_atomic(&to.master_key(), &k, crate::fsutil::PRIVATE)?;
        true
    } else {
        false
    };
    Ok((to, key_copied))
}
