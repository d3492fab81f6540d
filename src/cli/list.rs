//! `tillit list [--json]`: every identity with its state and expiry.

use super::AdminArgs;
use crate::proto::{ListReply, ListRequest};

pub async fn run(admin: AdminArgs) -> anyhow::Result<()> {
    let client = admin.client().await?;
    let r: ListReply = client.call::<crate::proto::List>(ListRequest {}).await?;
    if admin.json(&r)? {
        return Ok(());
    }
    for i in &r.identities {
        println!("{:<8} {:<52} {}  expires {}", i.state, i.id, &i.user_public_key[..12.min(i.user_public_key.len())], i.expires_at);
    }
    Ok(())
}
