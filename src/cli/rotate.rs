//! `tillit rotate signing-key [--retire-after 24h]`

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
    let What::SigningKey(s) = a.what;
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
