//! `tillit site add NAME --nats-port P --out DIR --identity ADMIN`, `tillit site list [--json]`,
//! `tillit site remove NAME`.
//!
//! `site add` makes the site server's TLS key and the nkeys its leafnode remotes log in as *here*
//! (they never travel), asks the control plane for the certificate, the users' JWTs and an agent
//! join token, and writes the site directory through a staging dir renamed into place.

use super::AdminArgs;
use crate::client::TillitClient;
use crate::clock::parse_duration;
use crate::fsutil::{create_dir, write_atomic, write_dir_atomic, Replace, WriteDirError};
use crate::layout::{IdentityDir, SiteDir};
use crate::natsconf::{render_site, SiteServer};
use crate::proto::{SiteAddReply, SiteAddRequest, SiteListReply, SiteListRequest};
use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: SiteCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SiteCommand {
    /// Register a site and write its leaf nats-server config and agent token into a directory.
    Add(AddArgs),
    /// Sites with their agents' progress.
    List(ListArgs),
    /// Remove a site: its agents and its server's links to the hub are revoked.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    pub name: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Site name (letters, digits, `-`, `_`).
    pub name: String,
    /// Client port of the site's leaf nats-server.
    #[arg(long)]
    pub nats_port: u16,
    /// Address the site server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Extra DNS names / IPs for the site server's certificate (repeatable).
    #[arg(long = "cert-host")]
    pub cert_hosts: Vec<String>,
    /// Directory to write (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// How long the agent's join token stays valid.
    #[arg(long, default_value = "1h")]
    pub token_ttl: String,
    /// Admin identity dir.
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    /// NATS URL to use instead of the identity's.
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub page: super::PageArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        SiteCommand::Add(a) => add(a).await,
        SiteCommand::List(a) => list(a).await,
        SiteCommand::Remove(a) => remove(a).await,
    }
}

async fn remove(a: RemoveArgs) -> anyhow::Result<()> {
    let client = a.admin.client().await?;
    let r: crate::proto::SiteRemoveReply = client
        .call::<crate::proto::SiteRemove>(crate::proto::SiteRemoveRequest { name: a.name.clone(), reason: a.reason })
        .await?;
    if !a.admin.json(&r)? {
        println!("site {} removed: {} agent(s) revoked, its server's links to the hub revoked", r.name, r.agents_revoked.len());
    }
    Ok(())
}

async fn add(a: AddArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.nats_port != 0, "--nats-port must be a port number");
    let ttl = parse_duration(&a.token_ttl).map_err(anyhow::Error::msg)?;
    let listen = if a.host.contains(':') { format!("[{}]:{}", a.host, a.nats_port) } else { format!("{}:{}", a.host, a.nats_port) };
    let client = TillitClient::connect_dir(&IdentityDir::new(&a.identity), a.nats.as_deref()).await?;
    register(&client, &a.name, &listen, &a.cert_hosts, ttl, &a.out).await
}

/// Register site `name` (its leaf server listening on `listen`) and write its directory to
/// `out`: keys made here, only public keys and a CSR sent (`tillit site add`, `tillit apply`).
pub(crate) async fn register(
    client: &TillitClient,
    name: &str,
    listen: &str,
    cert_hosts: &[String],
    ttl: std::time::Duration,
    out: &Path,
) -> anyhow::Result<()> {
    crate::names::check_segment("site name", name)?;
    let out = std::path::absolute(out).with_context(|| format!("--out {}", out.display()))?;
    anyhow::ensure!(
        crate::fsutil::is_absent_or_empty_dir(&out).unwrap_or(false),
        "{} exists and is not empty; pick a new directory for the site",
        out.display()
    );
    let sys_user = nkeys::KeyPair::new_user();
    let tillit_user = nkeys::KeyPair::new_user();
    let (csr, key_pem) = crate::issuer::x509::make_csr(&tillit_user.public_key())?;
    let reply: SiteAddReply = client
        .call::<crate::proto::SiteAdd>(SiteAddRequest {
                name: name.to_string(),
                listen: listen.to_string(),
                hosts: cert_hosts.to_vec(),
                csr,
                sys_user: sys_user.public_key(),
                tillit_user: tillit_user.public_key(),
                agent_token_ttl_secs: ttl.as_secs() as i64,
            },
        )
        .await?;
    let seed = |kp: &nkeys::KeyPair| kp.seed().map(crate::crypto::SecretString::new).map_err(|e| anyhow::anyhow!("nkey seed: {e}"));
    let conf = render_site(&SiteServer {
        trust_domain: &client.identity().info.trust_domain,
        site: name,
        listen,
        dir: &out,
        system_account: &reply.system_account,
        tillit_account: &reply.tillit_account,
        preload: reply.preload.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        hub_urls: &reply.hub_urls,
        admit_when_unreachable: reply.ocsp_when_unreachable.as_deref() == Some("admit"),
    });
    let files: Vec<(SiteFile, Vec<u8>, u32)> = vec![
        (SiteDir::server_conf, conf.into_bytes(), 0o644),
        (SiteDir::operator_jwt, reply.operator_jwt.clone().into_bytes(), 0o644),
        (SiteDir::ca, reply.ca_pem.clone().into_bytes(), 0o644),
        (SiteDir::cert, reply.cert_pem.clone().into_bytes(), 0o644),
        (SiteDir::key, key_pem.expose().as_bytes().to_vec(), 0o600),
        (SiteDir::sys_creds, crate::issuer::creds::format(&reply.sys_user_jwt, &seed(&sys_user)?).expose().as_bytes().to_vec(), 0o600),
        (SiteDir::tillit_creds, crate::issuer::creds::format(&reply.tillit_user_jwt, &seed(&tillit_user)?).expose().as_bytes().to_vec(), 0o600),
        (SiteDir::agent_token, format!("{}\n", reply.agent_token).into_bytes(), 0o600),
    ];
    write_site_dir(&out, &files)?;
    let site = SiteDir::new(&out);
    let port = listen.rsplit(':').next().unwrap_or("PORT");
    println!("site {name} registered; files in {}", out.display());
    println!("  leaf server   nats-server -c {}", site.server_conf().display());
    println!(
        "  agent         tillit agent --token-file {} --identity {} --out {} --nats nats://HOST:{port} --exec 'kill -HUP $(cat {})'",
        site.agent_token().display(),
        site.agent_identity().root().display(),
        out.display(),
        site.pid_file().display()
    );
    println!("  hub leafnodes {}", reply.hub_urls.join(", "));
    Ok(())
}

/// One file of a site dir: its path in a given one.
type SiteFile = fn(&SiteDir) -> PathBuf;

/// Write the site directory through a staging dir beside it, renamed into place.
fn write_site_dir(out: &Path, files: &[(SiteFile, Vec<u8>, u32)]) -> anyhow::Result<()> {
    let fill = |staging: &Path| -> std::io::Result<()> {
        let stage = SiteDir::new(staging);
        create_dir(&stage.tls(), 0o700)?;
        create_dir(&stage.resolver(), 0o700)?;
        create_dir(&stage.jetstream(), 0o700)?;
        for (file, data, mode) in files {
            write_atomic(&file(&stage), data, *mode)?;
        }
        Ok(())
    };
    write_dir_atomic(out, "site", Replace::IfEmpty, fill).map_err(|e| match e {
        WriteDirError::Fill(e) => anyhow::anyhow!("cannot write the site directory: {e}"),
        WriteDirError::NotEmpty { path, source } => anyhow::Error::new(source).context(format!("{} is not empty", path.display())),
        WriteDirError::Io { op: "rename", path, source } => {
            anyhow::Error::new(source).context(format!("move the site directory into {}", path.display()))
        }
        WriteDirError::Io { op, path, source } => anyhow::Error::new(source).context(format!("{op} {}", path.display())),
    })
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let client = a.admin.client().await?;
    let (sites, next) = a.page.call::<crate::proto::SiteList, _>(&client, |limit, after| SiteListRequest { limit, after }, |r: SiteListReply| (r.sites, r.next)).await?;
    let reply = SiteListReply { sites, next };
    if a.admin.json(&reply)? {
        return Ok(());
    }
    println!("{:<16} {:<22} {:>6} {:>8} {:>6} {:>8}  LAST ACK", "SITE", "LISTEN", "AGENTS", "APPLIED", "LAG", "FAILURES");
    for s in &reply.sites {
        println!(
            "{:<16} {:<22} {:>6} {:>8} {:>6} {:>8}  {}",
            s.name,
            s.listen,
            s.agents,
            s.last_applied_seq,
            s.lag_events,
            s.failures,
            s.last_ack_at.as_deref().unwrap_or("never")
        );
    }
    super::say_next(&reply.next);
    Ok(())
}
