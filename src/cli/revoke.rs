//! `tillit revoke SERVICE [--reason R]` and `tillit list [--json]`.

use super::AdminArgs;
use crate::names::ServiceId;
use crate::proto::{ListReply, ListRequest, RevokeReply, RevokeRequest};

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The service, `tenant/project/env/service`: every active identity of it is revoked.
    pub service: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let service = ServiceId::parse(&a.service)?;
    let client = a.admin.client().await?;
    let r: RevokeReply = client.call::<crate::proto::Revoke>(RevokeRequest { service, reason: a.reason }).await?;
    if !a.admin.json(&r)? {
        println!("revoked {} identit{} of {} at {}", r.revoked.len(), if r.revoked.len() == 1 { "y" } else { "ies" }, r.service, r.revoked_at);
        for i in &r.revoked {
            println!("  {}  serial {}", i.user_public_key, i.cert_serial);
        }
    }
    Ok(())
}

pub async fn list(a: ListArgs) -> anyhow::Result<()> {
    let client = a.admin.client().await?;
    let r: ListReply = client.call::<crate::proto::List>(ListRequest {}).await?;
    if a.admin.json(&r)? {
        return Ok(());
    }
    for i in &r.identities {
        println!("{:<8} {:<52} {}  expires {}", i.state, i.id, &i.user_public_key[..12.min(i.user_public_key.len())], i.expires_at);
    }
    Ok(())
}
