//! `tillit admin add NAME [--ttl 15m]` and `tillit admin revoke NAME [--reason …]`: more
//! admin identities, and taking one away. A new admin enrolls with the printed join token
//! (`tillit enroll --token-file …`), so its keys are made where it runs; the last live admin
//! cannot be revoked.

use super::AdminArgs;
use crate::names::admin_service_id;
use crate::proto::{RevokeReply, RevokeRequest, TokenCreateReply, TokenCreateRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Mint a join token for a new admin identity NAME; prints the token (enroll it with
    /// `tillit enroll --token-file F --out DIR`).
    Add(AddArgs),
    /// Revoke every live identity of admin NAME (never the last live admin).
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new admin's name (a-z, 0-9, '-', '_').
    pub name: String,
    /// How long the token stays valid (s, m, h, d).
    #[arg(long, env = "TILLIT_TTL", default_value = "15m")]
    pub ttl: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The admin's name (`admin` is the one `tillit init` made).
    pub name: String,
    /// Why (recorded in the audit log).
    #[arg(long, env = "TILLIT_REASON")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        AdminCommand::Add(a) => {
            let identity = admin_service_id(&a.name)?;
            let ttl = crate::clock::parse_duration(&a.ttl).map_err(anyhow::Error::msg)?;
            let client = a.admin.client().await?;
            let r: TokenCreateReply = client
                .call::<crate::proto::TokenCreate>(TokenCreateRequest { identity, ttl_secs: ttl.as_secs() as i64, count: 1 })
                .await?;
            for t in &r.tokens {
                println!("{t}");
            }
            tracing::info!(admin = %a.name, expires = %r.expires_at, "join token for a new admin created; enroll it with `tillit enroll`");
            Ok(())
        }
        AdminCommand::Revoke(a) => {
            let service = admin_service_id(&a.name)?;
            let client = a.admin.client().await?;
            let r: RevokeReply = client.call::<crate::proto::Revoke>(RevokeRequest { service, reason: a.reason }).await?;
            if !a.admin.json(&r)? {
                println!("revoked admin {} ({} identit{}) at {}", a.name, r.revoked.len(), if r.revoked.len() == 1 { "y" } else { "ies" }, r.revoked_at);
            }
            Ok(())
        }
    }
}
