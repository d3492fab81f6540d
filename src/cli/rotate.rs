//! `tillit rotate signing-key [--retire-after 24h]`, `tillit rotate ca`

use super::grant::AdminArgs;
use crate::proto::{RotateSigningKeyReply, RotateSigningKeyRequest};
use crate::subjects;

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
        .call(subjects::ADMIN_ROTATE_SIGNING_KEY, subjects::KIND_ROTATE_SIGNING_KEY, RotateSigningKeyRequest { retire_after_secs: after.as_secs() as i64 })
        .await?;
    if s.admin.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("envelopes are now signed by {}", r.current);
        println!("{} keeps verifying until {}", r.previous, r.retire_at);
    }
    Ok(())
}

async fn rotate_ca(c: CaArgs) -> anyhow::Result<()> {
    let client = c.admin.client().await?;
    let r: crate::proto::RotateCaReply = client.call(subjects::ADMIN_ROTATE_CA, subjects::KIND_ROTATE_CA, crate::proto::RotateCaRequest {}).await?;
    if c.admin.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    for ca in &r.cas {
        println!("{:<9} {} (expires {}{})", ca.state, ca.fingerprint, ca.expires_at, ca.retire_at.as_ref().map(|t| format!(", leaves the bundle {t}")).unwrap_or_default());
    }
    match &r.rollout {
        Some(ro) if !ro.sites_pending.is_empty() => {
            println!("the new CA is in every bundle; issuance switches once these sites acknowledge: {}", ro.sites_pending.join(", "));
            println!("follow it with `tillit status`");
        }
        _ => println!("issuance switched to the new CA"),
    }
    Ok(())
}
