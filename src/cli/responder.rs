//! `tillit responder --data-dir D [--addr HOST:PORT] [--nats URL]`
//!
//! An OCSP responder to run next to every hub nats-server: it answers from its copy of the
//! pre-signed answers (`D/responder/ocsp-answers.json`), kept current from the `TILLIT_OCSP`
//! bucket with the read-only access `serve` keeps in `D/responder/access.json`. It needs no
//! master key and no `serve`: with every replica stopped, the hub still admits valid
//! certificates and refuses revoked ones. Listens on `ocsp.local_url`'s address by default.

use crate::clock::SystemClock;
use crate::layout::DataDir;
use crate::ocsp::copy::Copy;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data dir written by `tillit init` (or a copy of its `tillit.toml` and `responder/`).
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Listen here (default: the host and port of `ocsp.local_url`).
    #[arg(long, env = "TILLIT_RESPONDER_ADDR")]
    pub addr: Option<std::net::SocketAddr>,
    /// NATS URL of the hub (default: the config's).
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let dir = DataDir::new(&a.data_dir);
    let config = crate::config::Config::load(&dir.config_file())?;
    let addr = match a.addr {
        Some(a) => a,
        None => config.ocsp_local_addr().ok_or_else(|| {
            anyhow::anyhow!("ocsp.local_url is not an http://IP:PORT URL this responder can listen on; pass --addr HOST:PORT")
        })?,
    };
    let copy = Arc::new(Copy::load(dir.responder_answers()));
    let urls = match &a.nats {
        Some(u) => vec![u.clone()],
        None => config.urls(),
    };
    let follower = {
        let copy = copy.clone();
        let access_path = dir.responder_access();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            // Connect (again) until it works: the hub may be starting, the access being renewed.
            let client = loop {
                let attempt = async {
                    let access = crate::store::StoreAccess::read_plain(&access_path).map_err(|e| e.to_string())?;
                    let params = access.connect_params(urls.clone(), "tillit OCSP responder")?;
                    crate::client::connect(&params).await.map_err(|e| e.to_string())
                };
                match attempt.await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!("responder: cannot reach the hub yet ({e}); answering from the copy, retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            };
            tracing::info!("responder: following the pre-signed OCSP answers");
            crate::ocsp::follow::follow(client, "$JS.API".into(), copy).await;
        })
    };
    let served = crate::ocsp::responder::run(addr, copy.clone(), Arc::new(SystemClock), super::shutdown_signal()).await;
    follower.abort();
    copy.save();
    served.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
