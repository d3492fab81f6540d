//! `tillit context --identity DIR [--name N] [--select] [--force] [--dir D]`: write a `nats` CLI
//! context for an identity dir, so `nats --context N …` (or plain `nats …` with `--select`)
//! connects as it.

use crate::layout::{IdentityDir, NatsConfigDir};
use anyhow::Context as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The identity dir to connect as.
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    /// Context name (default: `tillit-<tenant>-<project>-<env>-<service>`, `tillit-admin-<name>`, `tillit-agent-<site>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Also make it the `nats` CLI's selected context (`context.txt`).
    #[arg(long)]
    pub select: bool,
    /// Replace an existing context of that name.
    #[arg(long)]
    pub force: bool,
    /// The `nats` CLI's configuration dir (default: $XDG_CONFIG_HOME/nats, else ~/.config/nats).
    #[arg(long, env = "TILLIT_NATS_CONFIG_DIR")]
    pub dir: Option<PathBuf>,
    /// Print the context as JSON (with its name and path).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = match a.dir {
        Some(d) => NatsConfigDir::new(d),
        None => NatsConfigDir::default_location().context("neither XDG_CONFIG_HOME nor HOME is set; pass --dir")?,
    };
    let (ctx, path) = crate::natscontext::write(&cfg, &IdentityDir::new(&a.identity), a.name.as_deref(), a.force, a.select)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let shown = serde_json::json!({ "name": name, "path": path, "selected": a.select, "context": ctx });
    if !super::print_json(a.json, &shown)? {
        println!("wrote nats context {name} ({})", path.display());
        if a.select {
            println!("selected: nats commands use it by default");
        } else {
            println!("use it: nats --context {name} …   (or: nats context select {name})");
        }
    }
    Ok(())
}
