//! `tillit enroll (--token T | --token-file F | env TILLIT_TOKEN) --out DIR [--nats URL]`

use crate::clock::SystemClock;
use crate::crypto::SecretString;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").args(["token", "token_file"]).multiple(false)))]
pub struct Args {
    /// The join token (`tillit1.…`). Prefer --token-file or TILLIT_TOKEN: command lines are visible to other users.
    #[arg(long, env = "TILLIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Identity dir to write (must not hold an identity yet).
    #[arg(long)]
    pub out: PathBuf,
    /// NATS URL to use instead of the token's; recorded in identity.json.
    #[arg(long)]
    pub nats: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let token = match (a.token, a.token_file) {
        (Some(t), _) => SecretString::new(t),
        (None, Some(f)) => SecretString::new(
            std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", f.display()))?,
        ),
        (None, None) => anyhow::bail!("no join token: pass --token-file FILE, --token TOKEN, or set TILLIT_TOKEN"),
    };
    if let Some(u) = &a.nats {
        crate::config::NatsUrl::parse(u)?;
    }
    // A typo in --out must not burn the single-use token: the parent has to exist already.
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        anyhow::ensure!(
            parent.is_dir(),
            "{} does not exist: create it first (nothing was sent; the token is still unused)",
            parent.display()
        );
    }
    let info = crate::client::enroll::enroll(token.expose().trim(), &a.out, a.nats.as_deref(), Arc::new(SystemClock)).await?;
    println!("enrolled {} into {}", info.id, a.out.display());
    println!("  expires   {}", info.expires_at);
    println!("  renew at  {}", info.renew_at);
    Ok(())
}
