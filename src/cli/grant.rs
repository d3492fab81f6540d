//! `tillit grant SERVICE --pub SUBJ… --sub SUBJ…`, `tillit ungrant SERVICE …`,
//! `tillit grants SERVICE [--json]` (SERVICE is `tenant/project/env/service`).

use super::AdminArgs;
use crate::names::ServiceId;
use crate::proto::{GrantRequest, GrantsReply, ServiceRequest};

#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// The service, `tenant/project/env/service`.
    pub service: String,
    /// Subjects it may publish (repeatable).
    #[arg(long = "pub", num_args = 1..)]
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (repeatable).
    #[arg(long = "sub", num_args = 1..)]
    pub subscribe: Vec<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The service, `tenant/project/env/service`.
    pub service: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}


fn print(r: &GrantsReply, json: bool) -> anyhow::Result<()> {
    for w in &r.warnings {
        eprintln!("tillit: warning: {w}");
    }
    if super::print_json(json, r)? {
        return Ok(());
    }
    println!("{}", r.service);
    println!("  pub  {}", r.publish.join(" "));
    println!("  sub  {}", r.subscribe.join(" "));
    if !r.granted_pub.is_empty() || !r.granted_sub.is_empty() {
        println!("  granted pub {}  sub {}", r.granted_pub.join(" "), r.granted_sub.join(" "));
    }
    Ok(())
}

pub async fn grant(a: ChangeArgs, ungrant: bool) -> anyhow::Result<()> {
    let service = ServiceId::parse(&a.service)?;
    let client = a.admin.client().await?;
    let req = GrantRequest { service, publish: a.publish, subscribe: a.subscribe };
    let r: GrantsReply = if ungrant { client.call::<crate::proto::Ungrant>(req).await? } else { client.call::<crate::proto::Grant>(req).await? };
    print(&r, a.admin.json)
}

pub async fn grants(a: ShowArgs) -> anyhow::Result<()> {
    let service = ServiceId::parse(&a.service)?;
    let client = a.admin.client().await?;
    let r: GrantsReply = client.call::<crate::proto::Grants>(ServiceRequest { service }).await?;
    print(&r, a.admin.json)
}
