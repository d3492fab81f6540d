//! `tillit break-glass verify BUNDLE [--data-dir D] [--json]` and
//! `tillit break-glass rotate --data-dir D --out NEW`.
//!
//! `rotate` is an offline command on the data dir (with the master key, `serve` stopped), not a
//! verb of the control plane: the new bundle's private keys are made on the machine that
//! writes them and never cross NATS, and the rotation has to end with a restart of the hub's
//! nats-servers anyway (they read the operator JWT, which lists the bundle's operator signing
//! key, only at start). `serve` pushes the SYS account, with the old user revoked, when it
//! starts again.

use crate::breakglass::{self as bg, EstateFacts};
use crate::clock::{Clock, SystemClock};
use crate::layout::DataDir;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Check a bundle without using it: its keys, certificates and creds, and (with --data-dir)
    /// that the estate still pins and lists it. Exit 1 on any failed check.
    Verify(VerifyArgs),
    /// Make a new bundle and retire the current one (offline: `serve` stopped; restart the
    /// hub's nats-servers afterwards, then start `serve`).
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Also check it against this data dir's public files (operator JWT, the hub's trust file,
    /// break-glass.json); no master key needed.
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The data dir (its master key opens it; `serve` must be stopped).
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where to write the new bundle (0600); it must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Cmd::Verify(v) => verify(v),
        Cmd::Rotate(r) => tokio::task::block_in_place(|| rotate(r)),
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&a.bundle).with_context(|| format!("{}", a.bundle.display()))?;
    if meta.len() > bg::MAX_BUNDLE_BYTES as u64 {
        anyhow::bail!("{}: {} bytes, more than a bundle ever is", a.bundle.display(), meta.len());
    }
    let text = crate::crypto::SecretString::new(std::fs::read_to_string(&a.bundle).with_context(|| format!("{}", a.bundle.display()))?);
    let facts = a.data_dir.as_ref().map(|d| EstateFacts::read(&DataDir::new(d)));
    let findings = bg::verify(text.expose(), SystemClock.now_unix(), facts.as_ref());
    let failed = findings.iter().filter(|f| !f.ok).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "ok": failed == 0, "findings": findings }))?);
    } else {
        for f in &findings {
            println!("{} {:<14} {}", if f.ok { "ok  " } else { "FAIL" }, f.check, f.message);
        }
    }
    if failed > 0 {
        anyhow::bail!("{}: {failed} check(s) failed; this bundle would not open the estate", a.bundle.display());
    }
    if !a.json {
        println!("{}: verified{}", a.bundle.display(), if a.data_dir.is_some() { " against the estate" } else { " (add --data-dir to check it against the estate)" });
    }
    Ok(())
}

fn rotate(a: RotateArgs) -> anyhow::Result<()> {
    if a.out.exists() {
        anyhow::bail!("{} exists; choose a new file for the new bundle", a.out.display());
    }
    let dir = DataDir::new(&a.data_dir);
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let estate = super::open_offline(&dir, clock.clone(), "break-glass rotate", "a rotation is done offline, then the hub restarts")?;
    let old = estate.break_glass()?;
    let issued = estate.mint_break_glass()?;
    // The new bundle is on disk before anything changes: a failure after this leaves the old
    // bundle valid and this one unused.
    crate::fsutil::write_atomic(&a.out, issued.bundle.to_json().expose().as_bytes(), crate::fsutil::PRIVATE)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let mut batch = crate::store::Batch::new();
    if let Some(sys) = &issued.sys_account {
        batch.put_json(crate::store::Space::Accounts, crate::estate::SYS_ACCOUNT, sys)?;
    }
    let mut audit = crate::audit::Writer::open(&dir.audit(), estate.store_arc(), clock, estate.audit_key())?;
    audit.append(vec![crate::audit::Entry::ok("tillit", "break-glass.rotate", &issued.record.fingerprint)
        .detail(serde_json::json!({
            "previous": issued.previous.as_ref().map(|p| &p.fingerprint),
            "revoked_user": issued.previous.as_ref().map(|p| &p.user_public_key),
            "user": issued.record.user_public_key,
            "operator_signing_key": issued.record.operator_signing_key,
            "retired_operator_signing_key": issued.previous.as_ref().map(|p| &p.operator_signing_key),
            "expires_at": issued.record.expires_at,
        }))
        .batch(batch)])?;
    estate.commit_break_glass(&issued, false)?;
    estate.store().sync()?;
    let w = |p: PathBuf, data: &[u8], mode: u32| crate::fsutil::write_atomic(&p, data, mode).with_context(|| format!("writing {}", p.display()));
    w(dir.nats_ca(), estate.server_ca_bundle_pem().as_bytes(), crate::fsutil::PUBLIC)?;
    w(dir.operator_jwt(), issued.operator_jwt.as_bytes(), crate::fsutil::PUBLIC)?;
    w(dir.break_glass_record(), &serde_json::to_vec_pretty(&issued.record)?, crate::fsutil::PUBLIC)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({
            "bundle": a.out, "fingerprint": issued.record.fingerprint, "previous": old.map(|o| o.fingerprint),
            "restart_hub": true,
        }))?);
        return Ok(());
    }
    println!("new break-glass bundle {} ({})", a.out.display(), issued.record.fingerprint);
    if let Some(o) = &old {
        println!("  retired {}: its CA left the hub's trust file, its operator signing key the operator JWT, its user is revoked", o.fingerprint);
    }
    println!("  MOVE THE NEW BUNDLE OFFLINE NOW and destroy every copy of the old one.");
    if dir.break_glass_bundle().exists() {
        println!("  {} still holds a bundle (the old one, now useless): delete it", dir.break_glass_bundle().display());
    }
    println!("next (the hub reads the operator JWT only at start; until it restarts it still trusts the old bundle):");
    println!("  restart the hub's nats-server(s)   (a cluster: one node at a time)");
    println!("  tillit serve --data-dir {}   (pushes the SYS account with the old user revoked)", dir.root().display());
    Ok(())
}
