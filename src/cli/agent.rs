//! `tillit agent --identity DIR --out FILES [--exec CMD] [--nats URL] [--token-file F]`
//!
//! Enrolls first when DIR holds no identity yet (with the site's agent token), then runs until
//! SIGTERM or ctrl-c.

use crate::agent::{Agent, AgentOptions, MAX_BATCH};
use crate::client::ClientError;
use crate::clock::SystemClock;
use crate::crypto::SecretString;
use crate::layout::IdentityDir;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").args(["token", "token_file"]).multiple(false)))]
pub struct Args {
    /// The agent's identity dir (enrolled into on first start).
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    /// Where files are materialised: `ca.pem`, `secrets/<tenant>/<project>/<env>/<name>`.
    #[arg(long, env = "TILLIT_AGENT_OUT")]
    pub out: PathBuf,
    /// Shell command run once per applied batch (e.g. reload the site's nats-server).
    #[arg(long, env = "TILLIT_AGENT_EXEC")]
    pub exec: Option<String>,
    /// NATS URL of the site's leaf server (instead of the identity's).
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
    /// Join token for the first start (from `tillit site add`'s agent.token).
    #[arg(long, env = "TILLIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Most events applied per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Answer OCSP here for the site's nats-server, from a copy of the pre-signed answers kept
    /// in the out dir: the site admits valid certificates and refuses revoked ones while cut off
    /// from the hub. Use the host and port of the estate's `ocsp.local_url`.
    #[arg(long, env = "TILLIT_AGENT_OCSP_ADDR")]
    pub ocsp_addr: Option<std::net::SocketAddr>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=MAX_BATCH).contains(&a.batch), "--batch must be between 1 and {MAX_BATCH}");
    if let Some(u) = &a.nats {
        crate::config::NatsUrl::parse(u)?;
    }
    let dir = IdentityDir::new(&a.identity);
    // The responder first, from the saved copy: the site's server may need it to admit this
    // very agent while the hub is out of reach.
    let answers = match a.ocsp_addr {
        Some(addr) => {
            crate::fsutil::create_dir(&a.out, 0o700).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", a.out.display()))?;
            let copy = Arc::new(crate::ocsp::copy::Copy::load(crate::layout::SiteDir::new(&a.out).ocsp_answers()));
            // Bound here, so a taken port is this command's error, not a background task's.
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for OCSP on {addr}: {e}"))?;
            tokio::spawn(crate::ocsp::responder::serve(listener, copy.clone(), Arc::new(SystemClock), std::future::pending::<()>()));
            Some(copy)
        }
        None => None,
    };
    if !dir.identity_json().exists() {
        let token = match (&a.token, &a.token_file) {
            (Some(t), _) => SecretString::new(t.clone()),
            (None, Some(f)) => SecretString::new(
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", f.display()))?,
            ),
            (None, None) => anyhow::bail!(
                "{} holds no identity yet: pass --token-file with the site's agent.token (or --token / TILLIT_TOKEN)",
                a.identity.display()
            ),
        };
        // The site's server may still be connecting to the hub: retry what is transient; a
        // refusal (token used, expired, …) ends here.
        let mut delay = std::time::Duration::from_millis(250);
        let info = loop {
            match crate::client::enroll::enroll(token.expose().trim(), &a.identity, a.nats.as_deref(), Arc::new(SystemClock)).await {
                Ok(info) => break info,
                Err(e @ (ClientError::NoResponders { .. } | ClientError::Timeout { .. } | ClientError::Connect { .. } | ClientError::Request { .. })) => {
                    tracing::warn!("cannot enroll yet: {e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = super::shutdown_signal() => return Ok(()),
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(id = %info.id, "agent enrolled");
    }
    let agent = Agent::start(AgentOptions { identity: a.identity, files: a.out, exec: a.exec, nats: a.nats, batch: a.batch, notify: None }).await?;
    let follower = answers.clone().map(|copy| {
        tokio::spawn(crate::ocsp::follow::follow(agent.client(), format!("$JS.{}.API", crate::subjects::HUB_DOMAIN), copy))
    });
    let r = agent.run(super::shutdown_signal()).await;
    if let Some(f) = follower {
        f.abort();
    }
    if let Some(copy) = answers {
        copy.save();
    }
    r?;
    Ok(())
}
