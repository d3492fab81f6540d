//! `tillit config render --data-dir D [--check]`
//!
//! Writes the hub's `nats/server.conf` again from `tillit.toml` and the estate's accounts, the way
//! `init` wrote it: a setting changed after `init` (ports, OCSP posture, …) reaches the server
//! without `init --force` (which makes a new estate). Keys, certificates and identities stay.
//! Run it with `serve` stopped (a sled store is opened here), then reload nats-server.

use crate::clock::SystemClock;
use crate::estate::Estate;
use crate::layout::DataDir;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Rewrite DATA/nats/server.conf from tillit.toml (keys stay).
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Data dir written by `tillit init`.
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Only say whether the file would change (exit 1 if it would); write nothing.
    #[arg(long)]
    pub check: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        ConfigCommand::Render(r) => render(r),
    }
}

fn render(a: RenderArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&a.data_dir);
    let estate = Estate::open(dir.clone(), Arc::new(SystemClock))
        .map_err(|e| anyhow::anyhow!("{e} (stop `tillit serve` on this data dir first: its store is opened here)"))?;
    anyhow::ensure!(
        !dir.node_conf(1).exists(),
        "{} is a clustered hub: its node configs are not rendered by this version; edit them by hand",
        a.data_dir.display()
    );
    let conf = crate::init::render_hub_config(&estate)?;
    let path = dir.server_conf();
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current == conf {
        println!("{} is current", path.display());
        return Ok(());
    }
    if a.check {
        println!("{} would change", path.display());
        std::process::exit(1);
    }
    crate::fsutil::write_atomic(&path, conf.as_bytes(), 0o644).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    println!("rewrote {}", path.display());
    println!("next: reload nats-server (kill -HUP its pid, or `nats-server --signal reload`); a changed listen port needs a restart");
    Ok(())
}
