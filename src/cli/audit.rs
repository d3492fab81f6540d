//! `tillit audit verify --data-dir D` and `tillit audit tail --data-dir D [--json] [-n N]`, or
//! with `--identity ADMIN` instead of `--data-dir`, over NATS (owners and auditors; a
//! tenant-confined auditor's tail shows its tenants' records). With a data dir, both read the plain log file (or, with a JetStream store, the journal stream through the data
//! dir's store access), so they work while `serve` runs. `verify` checks every record's
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
    /// The data dir whose log to read (on the control plane's machine).
    #[arg(long, env = "TILLIT_DATA_DIR", required_unless_present = "identity", conflicts_with = "identity")]
    pub data_dir: Option<PathBuf>,
    /// Or an admin identity dir: ask the control plane over NATS (owners and auditors).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// NATS URL to use instead of the identity's.
    #[arg(long, requires = "identity")]
    pub nats: Option<String>,
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
    /// Only records before this sequence number (the `seq` of the first record a page showed:
    /// the page before it).
    #[arg(long)]
    pub before: Option<u64>,
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The journal stream of a data dir whose store is on JetStream, with a connection to it
/// (the data dir's store access); `None` for a file log.
fn journal_stream(data_dir: &std::path::Path) -> anyhow::Result<Option<(async_nats::Client, String)>> {
    let dir = DataDir::new(data_dir);
    let config = crate::config::Config::load(&dir.config_file())?;
    let crate::config::StoreBackend::JetStream { journal, .. } = &config.store else { return Ok(None) };
    let master = crate::crypto::MasterKey::load(data_dir)?;
    let access = crate::store::StoreAccess::read(&dir, &master)?;
    let params = access.connect_params(config.urls(), "tillit-audit").map_err(anyhow::Error::msg)?;
    let client = block_on(crate::client::connect(&params))?;
    Ok(Some((client, journal.clone())))
}

/// The control plane's client for `--identity`.
fn remote(c: &Common) -> anyhow::Result<crate::client::TillitClient> {
    let dir = c.identity.as_ref().ok_or_else(|| anyhow::anyhow!("give --identity"))?;
    Ok(block_on(crate::client::TillitClient::connect_dir(&crate::layout::IdentityDir::new(dir), c.nats.as_deref()))?)
}

fn print_record(json: bool, r: &crate::proto::AuditRecordInfo) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{:>6}  {}  {:<13} {:<8} {}  by {}", r.seq, r.time, r.action, r.outcome, r.target, r.actor);
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        AuditCommand::Verify(v) if v.common.identity.is_some() => {
            let client = remote(&v.common)?;
            let r = block_on(client.call::<crate::proto::AuditVerify>(crate::proto::AuditVerifyRequest {}))?;
            if v.common.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            match (&r.error, v.common.json) {
                (Some(e), _) => anyhow::bail!("{e}"),
                (None, true) => Ok(()),
                (None, false) => {
                    println!("audit chain ok: {} records, head {}; {} authenticated{}", r.records, r.head, r.authenticated, if r.anchored { ", head anchor matches" } else { "" });
                    Ok(())
                }
            }
        }
        AuditCommand::Tail(t) if t.common.identity.is_some() => {
            let client = remote(&t.common)?;
            let r = block_on(client.call::<crate::proto::AuditTail>(crate::proto::AuditTailRequest { n: t.n, before: t.before }))?;
            for rec in &r.records {
                print_record(t.common.json, rec)?;
            }
            Ok(())
        }
        AuditCommand::Verify(v) => {
            let c = v.common;
            let data_dir = c.data_dir.clone().ok_or_else(|| anyhow::anyhow!("give --data-dir or --identity"))?;
            let path = DataDir::new(&data_dir).audit_log();
            let key = if v.chain_only {
                None
            } else {
                let master = crate::crypto::MasterKey::load(&data_dir).map_err(|e| {
                    anyhow::anyhow!("{e}\n(`audit verify` checks each record's MAC with the master key; `--chain-only` checks the hash chain without it)")
                })?;
                Some(master.derive(audit::AUDIT_KEY_LABEL))
            };
            let result = match (journal_stream(&data_dir)?, &key) {
                (Some(_), None) => anyhow::bail!("the journal is on JetStream: `audit verify` needs the master key to reach it (no --chain-only)"),
                (Some((client, name)), Some(key)) => block_on(audit::read_stream(client, &name, key, |_| {}))?,
                (None, _) => audit::verify(&path, key.as_ref())?,
            };
            match result {
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
            let data_dir = t.common.data_dir.clone().ok_or_else(|| anyhow::anyhow!("give --data-dir or --identity"))?;
            let path = DataDir::new(&data_dir).audit_log();
            let records = match journal_stream(&data_dir)? {
                Some((client, name)) => {
                    let key = crate::crypto::MasterKey::load(&data_dir)?.derive(audit::AUDIT_KEY_LABEL);
                    let mut last = std::collections::VecDeque::with_capacity(t.n);
                    let r = block_on(audit::read_stream(client, &name, &key, |r| {
                        if t.before.is_some_and(|b| r.seq >= b) {
                            return;
                        }
                        if last.len() == t.n {
                            last.pop_front();
                        }
                        last.push_back(r.clone());
                    }))?;
                    r?;
                    last.into_iter().collect()
                }
                None => audit::tail_before(&path, t.n, t.before)?,
            };
            for r in records {
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
