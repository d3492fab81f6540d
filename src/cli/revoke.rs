//! `tillit revoke SERVICE [--reason R]`.

use super::AdminArgs;
use crate::names::ServiceId;
use crate::proto::{RevokeReply, RevokeRequest};

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
