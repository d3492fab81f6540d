//! `tillit audit verify --data-dir D` and `tillit audit tail --data-dir D [--json] [-n N]`.
//! Both read the plain log file, so they work while `serve` runs. `verify` checks every record's
//! MAC with the master key (`DATA/master.key` or `TILLIT_MASTER_KEY`); `--chain-only` checks the
//! hash chain alone where the master key is not at hand.

use crate::audit;
use crate::layout::DataDir;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole log (hash chain, every record's MAC, the head anchor); names the first
    /// bad record.
    Verify(VerifyArgs),
    /// Print the last records.
    Tail(TailArgs),
}

#[derive(Debug, clap::Args)]
pub struct Common {
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: Common,
    /// Check the hash chain only (no master key needed): finds edits and deletions inside the
    /// log, not records forged by someone who re-chained them.
    #[arg(long, env = "TILLIT_CHAIN_ONLY")]
    pub chain_only: bool,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many records.
    #[arg(short = 'n', default_value_t = 20)]
    pub n: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        AuditCommand::Verify(v) => {
            let c = v.common;
            let path = DataDir::new(&c.data_dir).audit_log();
            let key = if v.chain_only {
                None
            } else {
                let master = crate::crypto::MasterKey::load(&c.data_dir).map_err(|e| {
                    anyhow::anyhow!("{e}\n(`audit verify` checks each record's MAC with the master key; `--chain-only` checks the hash chain without it)")
                })?;
                Some(master.derive(audit::AUDIT_KEY_LABEL))
            };
            match audit::verify(&path, key.as_ref())? {
                Ok(r) => {
                    if c.json {
                        println!(
                            "{}",
                            serde_json::json!({ "ok": true, "records": r.records, "head": r.head, "authenticated": r.authenticated,
                                "legacy_unauthenticated": r.legacy, "anchored": r.anchored, "chain_only": v.chain_only })
                        );
                    } else if v.chain_only {
                        println!("audit chain ok: {} records, head {} (MACs not checked: --chain-only)", r.records, r.head);
                    } else {
                        println!(
                            "audit chain ok: {} records, head {}; {} authenticated{}{}",
                            r.records,
                            r.head,
                            r.authenticated,
                            if r.legacy > 0 { format!(", {} from before records were authenticated", r.legacy) } else { String::new() },
                            if r.anchored { ", head anchor matches" } else { ", no head anchor yet" }
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    if c.json {
                        println!("{}", serde_json::json!({ "ok": false, "line": e.line, "seq": e.seq, "reason": e.reason }));
                    }
                    anyhow::bail!("{e}")
                }
            }
        }
        AuditCommand::Tail(t) => {
            let path = DataDir::new(&t.common.data_dir).audit_log();
            for r in audit::tail(&path, t.n)? {
                if t.common.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{:>6}  {}  {:<13} {:<8} {}  by {}", r.seq, r.time, r.action, r.outcome, r.target, r.actor);
                }
            }
            Ok(())
        }
    }
}
