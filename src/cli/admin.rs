//! `tillit admin add NAME --role owner|operator|auditor [--tenant T …]`, `tillit admin list` and
//! `tillit admin revoke NAME`: admins with roles, and taking one away. A new admin enrolls with
//! the printed join token (`tillit enroll --token-file …`), so its keys are made where it runs;
//! the last live owner cannot be revoked. Only owners add and revoke admins.

use super::AdminArgs;
use crate::names::admin_service_id;
use crate::proto::{AdminAddRequest, AdminListReply, AdminListRequest, AdminRole, RevokeReply, RevokeRequest, TokenCreateReply};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Mint a join token for a new admin identity NAME with a role; prints the token (enroll it
    /// with `tillit enroll --token-file F --out DIR`). Owners only.
    Add(AddArgs),
    /// List admins: name, role, tenants, state, live identities.
    List(ListArgs),
    /// Revoke every live identity of admin NAME (never the last live owner). Owners only.
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new admin's name (a-z, 0-9, '-', '_').
    pub name: String,
    /// What it may do: owner (everything, admins too), operator (tokens, grants, revocations,
    /// secrets, sites, rotations) or auditor (read-only). `owner` keeps what `admin add` did
    /// before roles existed.
    #[arg(long, env = "TILLIT_ROLE", default_value = "owner")]
    pub role: AdminRole,
    /// Confine an operator or auditor to this tenant (repeat for several): anything outside is
    /// `forbidden`, listings show only these tenants.
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// How long the token stays valid (s, m, h, d).
    #[arg(long, env = "TILLIT_TTL", default_value = "15m")]
    pub ttl: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
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
            let ttl = crate::clock::parse_duration(&a.ttl).map_err(anyhow::Error::msg)?;
            let client = a.admin.client().await?;
            let r: TokenCreateReply = client
                .call::<crate::proto::AdminAdd>(AdminAddRequest { name: a.name.clone(), role: a.role, tenants: a.tenants.clone(), ttl_secs: ttl.as_secs() as i64 })
                .await?;
            for t in &r.tokens {
                println!("{t}");
            }
            tracing::info!(admin = %a.name, role = %a.role, expires = %r.expires_at, "join token for a new admin created; enroll it with `tillit enroll`");
            Ok(())
        }
        AdminCommand::List(a) => {
            let client = a.admin.client().await?;
            let r: AdminListReply = client.call::<crate::proto::AdminList>(AdminListRequest {}).await?;
            if !a.admin.json(&r)? {
                println!("{:<20} {:<9} {:<8} {:>4}  {:<20}  TENANTS", "NAME", "ROLE", "STATE", "LIVE", "EXPIRES");
                for i in &r.admins {
                    let tenants = if i.tenants.is_empty() { "*".to_string() } else { i.tenants.join(",") };
                    println!("{:<20} {:<9} {:<8} {:>4}  {:<20}  {tenants}", i.name, i.role, i.state, i.active_identities, i.expires_at);
                }
            }
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
