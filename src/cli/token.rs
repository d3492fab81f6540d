//! `tillit token create --identity ADMIN --tenant T --project P --env E --service S [--ttl 15m] [--count N]`

use crate::client::TillitClient;
use crate::layout::IdentityDir;
use crate::names::ServiceId;
use crate::proto::{TokenCreateReply, TokenCreateRequest};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint single-use join tokens for one service identity; prints one per line.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Admin identity dir (e.g. DATA/admin).
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    #[arg(long, required_unless_present = "site")]
    pub tenant: Option<String>,
    #[arg(long, required_unless_present = "site")]
    pub project: Option<String>,
    #[arg(long, required_unless_present = "site")]
    pub env: Option<String>,
    #[arg(long, required_unless_present = "site")]
    pub service: Option<String>,
    /// Mint tokens for this site's agents instead of a service.
    #[arg(long, conflicts_with_all = ["tenant", "project", "env", "service"])]
    pub site: Option<String>,
    /// How long the tokens stay valid (s, m, h, d).
    #[arg(long, default_value = "15m")]
    pub ttl: String,
    /// How many tokens (one per instance to enroll).
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// NATS URL to use instead of the identity's.
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
    /// Write the tokens to this file (0600, one per line, written only when every token was
    /// made; refuses an existing file) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        TokenCommand::Create(c) => create(c).await,
    }
}

async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let identity = match (&a.site, &a.tenant, &a.project, &a.env, &a.service) {
        (Some(site), ..) => crate::names::agent_service_id(site)?,
        (None, Some(t), Some(p), Some(e), Some(s)) => ServiceId::new(t, p, e, s)?,
        _ => anyhow::bail!("name the service with --tenant, --project, --env and --service (or a site with --site)"),
    };
    let ttl = crate::clock::parse_duration(&a.ttl).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(a.count >= 1 && a.count <= 100_000, "--count must be between 1 and 100000");
    if let Some(out) = &a.out {
        anyhow::ensure!(!out.exists(), "{} exists: tokens are never written over a file", out.display());
    }
    let client = TillitClient::connect_dir(&IdentityDir::new(&a.identity), a.nats.as_deref()).await?;
    let mut left = a.count;
    let mut expires = String::new();
    let mut all = Vec::new();
    while left > 0 {
        let count = left.min(crate::estate::MAX_TOKENS_PER_REQUEST);
        let reply: TokenCreateReply = client
            .call::<crate::proto::TokenCreate>(TokenCreateRequest { identity: identity.clone(), ttl_secs: ttl.as_secs() as i64, count },
            )
            .await?;
        match &a.out {
            Some(_) => all.extend(reply.tokens.iter().cloned()),
            None => {
                for t in &reply.tokens {
                    println!("{t}");
                }
            }
        }
        left -= count;
        expires = reply.expires_at;
    }
    if let Some(out) = &a.out {
        let mut text = zeroize::Zeroizing::new(all.join("\n"));
        text.push('\n');
        crate::fsutil::write_atomic(out, text.as_bytes(), crate::fsutil::PRIVATE).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    tracing::info!(identity = %identity, count = a.count, expires = %expires, "join tokens created");
    Ok(())
}
