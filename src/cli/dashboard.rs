//! `tillit dashboard --identity ADMIN`: print a one-time URL that opens the read-only dashboard
//! in a browser as this admin (valid a minute, once).

use super::AdminArgs;
use crate::proto::{DashboardSession, DashboardSessionRequest};

pub async fn run(a: AdminArgs) -> anyhow::Result<()> {
    let client = a.client().await?;
    let r = client.call::<DashboardSession>(DashboardSessionRequest {}).await?;
    if !a.json(&r)? {
        println!("{}", r.url);
    }
    tracing::info!(expires = %r.expires_at, "open the URL once, within a minute: it signs this browser in as the admin (read-only)");
    Ok(())
}
