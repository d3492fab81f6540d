//! `tillit serve --data-dir D`

use crate::clock::SystemClock;
use crate::estate::Estate;
use crate::layout::DataDir;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data dir written by `tillit init`.
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Listen here for HTTP instead of the config's `http.addr` (one more replica on the same
    /// machine; certificates keep naming `http.public_url` for OCSP and CRL).
    #[arg(long, env = "TILLIT_SERVE_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let dir = DataDir::new(&a.data_dir);
    let estate = tokio::task::block_in_place(|| Estate::open_serving(dir, Arc::new(SystemClock), a.http_addr))?;
    crate::server::serve(estate, super::shutdown_signal()).await?;
    Ok(())
}
