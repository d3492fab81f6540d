//! `tillit list [--limit N [--after CURSOR]] [--json]`: every identity with its state and
//! expiry (every page, or one).

use super::{AdminArgs, PageArgs};
use crate::proto::{ListReply, ListRequest};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(a: ListArgs) -> anyhow::Result<()> {
    let client = a.admin.client().await?;
    let (identities, next) = a.page.call::<crate::proto::List, _>(&client, |limit, after| ListRequest { limit, after }, |r: ListReply| (r.identities, r.next)).await?;
    let r = ListReply { identities, next };
    if a.admin.json(&r)? {
        return Ok(());
    }
    for i in &r.identities {
        println!("{:<8} {:<52} {}  expires {}", i.state, i.id, &i.user_public_key[..12.min(i.user_public_key.len())], i.expires_at);
    }
    super::say_next(&r.next);
    Ok(())
}
