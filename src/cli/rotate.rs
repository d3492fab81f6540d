//! `tillit rotate signing-key [--retire-after 24h]`, `tillit rotate ca [--finish]`

use super::AdminArgs;
use crate::proto::{RotateSigningKeyReply, RotateSigningKeyRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Rotate the envelope signing key with overlap (admin).
    SigningKey(SigningKeyArgs),
    /// Rotate the CA with overlap: new CA in every bundle, issuance switches once every site
    /// acknowledged, the old CA leaves after its last certificate expired (admin).
    Ca(CaArgs),
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Retire the previous CA now instead of after its last client certificate expired (a
    /// compromised CA): sites' and the hub's server certificates are re-issued first; clients
    /// still holding its certificates must renew.
    #[arg(long)]
    pub finish: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct SigningKeyArgs {
    /// How long the old key keeps verifying (s, m, h, d).
    #[arg(long, default_value = "24h")]
    pub retire_after: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let s = match a.what {
        What::SigningKey(s) => s,
        What::Ca(c) => return rotate_ca(c).await,
    };
    let after = crate::clock::parse_duration(&s.retire_after).map_err(anyhow::Error::msg)?;
    let client = s.admin.client().await?;
    let r: RotateSigningKeyReply = client
        .call::<crate::proto::RotateSigningKey>(RotateSigningKeyRequest { retire_after_secs: after.as_secs() as i64 })
        .await?;
    if !s.admin.json(&r)? {
        println!("envelopes are now signed by {}", r.current);
        println!("{} keeps verifying until {}", r.previous, r.retire_at);
    }
    Ok(())
}

async fn rotate_ca(c: CaArgs) -> anyhow::Result<()> {
    if c.finish {
        // The admin's own certificate and bundle move to the new CA first: once the old CA is
        // gone, a certificate it issued (or a bundle without the new CA) no longer connects.
        let dir = crate::layout::IdentityDir::new(&c.admin.identity);
        let session = crate::client::session::Session::connect(&dir, c.admin.nats.as_deref()).await?;
        session.renew_now().await?;
    }
    let client = c.admin.client().await?;
    let r: crate::proto::RotateCaReply = client.call::<crate::proto::RotateCa>(crate::proto::RotateCaRequest { finish: c.finish }).await?;
    if c.admin.json(&r)? {
        return Ok(());
    }
    for ca in &r.cas {
        println!("{:<9} {} (expires {}{})", ca.state, ca.fingerprint, ca.expires_at, ca.retire_at.as_ref().map(|t| format!(", leaves the bundle {t}")).unwrap_or_default());
    }
    match &r.rollout {
        _ if r.phase == crate::proto::RotatePhase::Retiring => {
            println!("the previous CA retires as soon as every site server's certificate was re-issued (see `tillit site list`)");
        }
        Some(ro) if !ro.sites_pending.is_empty() => {
            println!("the new CA is in every bundle; issuance switches once these sites acknowledge: {}", ro.sites_pending.join(", "));
            println!("follow it with `tillit status`");
        }
        _ => println!("issuance switched to the new CA"),
    }
    Ok(())
}
