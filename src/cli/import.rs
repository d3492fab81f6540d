//! `tillit import nsc --store DIR [--keys DIR] --data-dir D --trust-domain TD …`: take over an
//! operator managed with `nsc` into a new data dir (`init`'s flags), or only show the plan.

use super::init::EstateArgs;
use crate::clock::{Clock, SystemClock};
use crate::init::init;
use crate::nsc::{self, Mapping, Source};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ImportCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// Take over an operator managed with nsc: operator, accounts, their signing keys, imports
    /// and exports become tillit's (sealed at rest) in a new data dir; users nsc issued keep
    /// connecting until their JWTs expire. `--plan` shows what would happen and writes nothing.
    Nsc(NscArgs),
}

#[derive(Debug, clap::Args)]
pub struct NscArgs {
    /// nsc's store dir (`nsc env` shows it), or one operator's dir in it.
    #[arg(long = "store", value_name = "DIR")]
    pub nsc_store: PathBuf,
    /// nsc's keys dir (the one holding `keys/` and `creds/`, or that `keys/` itself)
    /// [default: $NKEYS_PATH, else $XDG_DATA_HOME/nats/nsc/keys, i.e. ~/.local/share/nats/nsc/keys].
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// The operator to take over, when the store holds several.
    #[arg(long)]
    pub operator: Option<String>,
    /// Make an nsc account a tenant's account (repeatable), e.g. `legacy=globex/dev`. Accounts
    /// named `tenant-env` map by their name; others are adopted as they are.
    #[arg(long = "map", value_name = "ACCOUNT=TENANT/ENV")]
    pub map: Vec<Mapping>,
    /// Leave an nsc account out (repeatable): it is not adopted and its users stop connecting.
    #[arg(long = "skip", value_name = "ACCOUNT")]
    pub skip: Vec<String>,
    /// Show what would be adopted and what tillit cannot represent; write nothing.
    #[arg(long)]
    pub plan: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// tillit's store backend for the new data dir (`init --store`): `sled` or `jetstream`.
    #[arg(long, env = "TILLIT_STORE", default_value = "sled", value_parser = ["sled", "jetstream"])]
    pub store_backend: String,
    #[command(flatten)]
    pub estate: EstateArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        ImportCommand::Nsc(n) => import_nsc(n),
    }
}

fn import_nsc(a: NscArgs) -> anyhow::Result<()> {
    let keys = a
        .keys
        .or_else(nsc::default_keys_dir)
        .ok_or_else(|| anyhow::anyhow!("no --keys, {} or HOME: say where nsc's keys dir is with --keys", nsc::NKEYS_PATH_ENV))?;
    let src = Source { store: a.nsc_store, keys, operator: a.operator, map: a.map, skip: a.skip };
    let mut adoption = nsc::read(&src, SystemClock.now_unix())?;
    // `init` would refuse an existing data dir: the plan says so too.
    let dir = &a.estate.data_dir;
    if !a.estate.force && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        adoption.plan.blocking.push(format!("{} is not empty: choose a new --data-dir (or --force to replace the estate in it)", dir.display()));
    }
    tracing::info!(
        operator = %adoption.operator.name,
        accounts = adoption.accounts.len(),
        blocking = adoption.plan.blocking.len(),
        "read the nsc store {} and keys {}",
        src.store.display(),
        src.keys.display()
    );
    if a.plan {
        if !super::print_json(a.json, &adoption.plan)? {
            print!("{}", adoption.plan.to_text());
        }
        return Ok(());
    }
    let adoption = adoption.ready()?;
    let plan = adoption.plan.clone();
    let s = init(&a.estate.options(a.store_backend, Some(Arc::new(adoption))), Arc::new(SystemClock))?;
    tracing::info!(operator = %s.operator, adopted = ?s.adopted, "took the nsc operator over");
    let done = serde_json::json!({
        "data_dir": s.data_dir, "operator": s.operator, "adopted": s.adopted, "nsc_clients": s.nsc_clients,
        "admin": s.admin_dir, "server_conf": s.server_conf, "plan": plan,
    });
    if super::print_json(a.json, &done)? {
        return Ok(());
    }
    super::init::print_summary(&s, true);
    println!("adopted from nsc ({} accounts besides the operator and SYS): {}", s.adopted.len(), s.adopted.join(", "));
    if let Some(d) = &s.nsc_clients {
        println!("  nsc users connect with their .creds and the client certificate in {} (tls/cert.pem, tls/key.pem, tls/ca.pem)", d.display());
    }
    for c in &plan.cannot_represent {
        println!("  not carried over: {c}");
    }
    Ok(())
}
