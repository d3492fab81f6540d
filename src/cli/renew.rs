//! `tillit renew --identity DIR [--daemon]`

use crate::client::session::Session;
use crate::layout::IdentityDir;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Identity dir to renew in place.
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    /// Keep running: renew at 2/3 of each credential's life (with jitter), retrying with backoff.
    #[arg(long)]
    pub daemon: bool,
    /// NATS URL to use instead of the identity's.
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let session = Session::connect(&IdentityDir::new(&a.identity), a.nats.as_deref()).await?;
    if !a.daemon {
        let info = session.renew_now().await?;
        println!("renewed {} (expires {}, renew at {})", info.id, info.expires_at, info.renew_at);
        return Ok(());
    }
    let info = session.identity();
    tracing::info!(identity = %info.id, renew_at = %info.renew_at, "renewal daemon started");
    super::shutdown_signal().await;
    Ok(())
}
