//! `tillit secret put|rotate|list|versions|delete` (admin) and `tillit secret get` (service).

use super::AdminArgs;
use crate::client::secrets::seal_for_control_plane;
use crate::client::session::Session;
use crate::layout::IdentityDir;
use crate::proto::{SecretInfo, SecretListReply, SecretListRequest, SecretPathRequest, SecretPutRequest, SecretReply, SecretRotateRequest};
use crate::secrets::{SecretPath, MAX_VALUE_BYTES};
use std::io::{Read, Write};
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Store a new secret (admin). The value is sealed to the control plane before it leaves.
    Put(PutArgs),
    /// Store a new version (admin): a given value, or --generate N random bytes made by the control plane.
    Rotate(RotateArgs),
    /// List secrets and their metadata, never values (admin).
    List(ListArgs),
    /// Show a secret's versions (admin).
    Versions(PathArgs),
    /// Delete a secret and all its versions (admin).
    Delete(PathArgs),
    /// Print a secret's value (as a service identity allowed to read it).
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("value").args(["value_file", "value_stdin"]).required(true)))]
pub struct PutArgs {
    /// tenant/project/env/name
    pub path: String,
    #[arg(long)]
    pub value_file: Option<PathBuf>,
    #[arg(long)]
    pub value_stdin: bool,
    /// Who may read it: tenant/project/env/service, tenant/project/env/*, or site:NAME (repeatable).
    #[arg(long = "reader", required = true)]
    pub readers: Vec<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("value").args(["value_file", "value_stdin", "generate"]).required(true)))]
pub struct RotateArgs {
    pub path: String,
    #[arg(long)]
    pub value_file: Option<PathBuf>,
    #[arg(long)]
    pub value_stdin: bool,
    /// Let the control plane generate N random bytes (base64url): no value crosses the network.
    #[arg(long)]
    pub generate: Option<usize>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only paths starting with this.
    pub prefix: Option<String>,
    #[command(flatten)]
    pub page: super::PageArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct PathArgs {
    pub path: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct GetArgs {
    /// A bare name (in the identity's own tenant/project/env) or tenant/project/env/name.
    pub name: String,
    #[arg(long)]
    pub version: Option<u32>,
    /// Print JSON ({"path","version","value"}).
    #[arg(long)]
    pub json: bool,
    /// The service identity dir.
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

fn read_value(file: &Option<PathBuf>, stdin: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    match (file, stdin) {
        (Some(f), _) => {
            std::fs::File::open(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
                .take(MAX_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut buf)?;
        }
        (None, true) => {
            std::io::stdin().take(MAX_VALUE_BYTES as u64 + 1).read_to_end(&mut buf)?;
        }
        _ => anyhow::bail!("give --value-file FILE or --value-stdin"),
    }
    anyhow::ensure!(buf.len() <= MAX_VALUE_BYTES, "secret values are at most {MAX_VALUE_BYTES} bytes");
    Ok(buf)
}

fn print(s: &SecretInfo, json: bool) -> anyhow::Result<()> {
    if !super::print_json(json, s)? {
        println!("{}  v{}  readers {}", s.path, s.current_version, s.readers.join(" "));
        for v in &s.versions {
            println!("  v{:<4} {}  {} bytes  by {}", v.version, v.created_at, v.bytes, v.created_by);
        }
    }
    Ok(())
}

fn trust_jwks(a: &AdminArgs) -> anyhow::Result<String> {
    let p = IdentityDir::new(&a.identity).trust_jwks();
    std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        SecretCommand::Put(p) => {
            let path = SecretPath::parse(&p.path)?;
            let value = read_value(&p.value_file, p.value_stdin)?;
            let sealed = seal_for_control_plane(&trust_jwks(&p.admin)?, &value)?;
            let client = p.admin.client().await?;
            let r: SecretReply = client
                .call::<crate::proto::SecretPut>(SecretPutRequest { path, readers: p.readers, value: sealed })
                .await?;
            print(&r.secret, p.admin.json)
        }
        SecretCommand::Rotate(p) => {
            let path = SecretPath::parse(&p.path)?;
            let value = match p.generate {
                Some(_) => None,
                None => Some(seal_for_control_plane(&trust_jwks(&p.admin)?, &read_value(&p.value_file, p.value_stdin)?)?),
            };
            let client = p.admin.client().await?;
            let r: SecretReply = client
                .call::<crate::proto::SecretRotate>(SecretRotateRequest { path, value, generate: p.generate })
                .await?;
            print(&r.secret, p.admin.json)
        }
        SecretCommand::List(l) => {
            let client = l.admin.client().await?;
            let prefix = l.prefix.clone().unwrap_or_default();
            let (secrets, next) = l
                .page
                .call::<crate::proto::SecretList, _>(&client, |limit, after| SecretListRequest { prefix: prefix.clone(), limit, after }, |r: SecretListReply| (r.secrets, r.next))
                .await?;
            let r = SecretListReply { secrets, next };
            if !l.admin.json(&r)? {
                for s in &r.secrets {
                    println!("{}  v{}  readers {}", s.path, s.current_version, s.readers.join(" "));
                }
                super::say_next(&r.next);
            }
            Ok(())
        }
        SecretCommand::Versions(p) => {
            let path = SecretPath::parse(&p.path)?;
            let client = p.admin.client().await?;
            let r: SecretReply = client.call::<crate::proto::SecretVersions>(SecretPathRequest { path }).await?;
            print(&r.secret, p.admin.json)
        }
        SecretCommand::Delete(p) => {
            let path = SecretPath::parse(&p.path)?;
            let client = p.admin.client().await?;
            let r: SecretReply = client.call::<crate::proto::SecretDelete>(SecretPathRequest { path }).await?;
            println!("deleted {} ({} versions)", r.secret.path, r.secret.versions.len());
            Ok(())
        }
        SecretCommand::Get(g) => {
            let session = Session::connect(&IdentityDir::new(&g.identity), g.nats.as_deref()).await?;
            let (value, version) = session.secret_version(&g.name, g.version).await?;
            if g.json {
                println!("{}", serde_json::json!({ "name": g.name, "version": version, "value": value.expose() }));
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(value.expose().as_bytes())?;
                out.flush()?;
            }
            Ok(())
        }
    }
}
