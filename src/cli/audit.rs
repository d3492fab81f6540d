//! `tillit audit verify --data-dir D` and `tillit audit tail --data-dir D [--json] [-n N]`.
//! Both read the plain log file, so they work while `serve` runs.

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
    /// Check the whole hash chain; names the first bad record.
    Verify(Common),
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
pub struct TailArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many records.
    #[arg(short = 'n', default_value_t = 20)]
    pub n: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        AuditCommand::Verify(c) => {
            let path = DataDir::new(&c.data_dir).audit().join(audit::AUDIT_FILE);
            match audit::verify(&path)? {
                Ok(v) => {
                    if c.json {
                        println!("{}", serde_json::json!({ "ok": true, "records": v.records, "head": v.head }));
                    } else {
                        println!("audit chain ok: {} records, head {}", v.records, v.head);
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
            let path = DataDir::new(&t.common.data_dir).audit().join(audit::AUDIT_FILE);
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
