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
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let estate = Estate::open(DataDir::new(&a.data_dir), Arc::new(SystemClock))?;
    crate::server::serve(estate, super::shutdown_signal()).await?;
    Ok(())
}
