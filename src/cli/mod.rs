//! The command line (house rule 12): one file per subcommand; each parses its flags (with
//! `TILLIT_*` environment fallbacks) and calls the library.

pub mod admin;
pub mod dashboard;
pub mod estate;
pub mod agent;
pub mod audit;
pub mod backup;
pub mod bench;
pub mod config;
pub mod breakglass;
pub mod context;
pub mod dev;
pub mod enroll;
pub mod grant;
pub mod import;
pub mod init;
pub mod list;
pub mod renew;
pub mod responder;
pub mod restore;
pub mod revoke;
pub mod rotate;
pub mod secret;
pub mod serve;
pub mod site;
pub mod status;
pub mod store;
pub mod token;

use crate::client::TillitClient;
use crate::layout::IdentityDir;
use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// tillit — a NATS-native trust control plane.
#[derive(Debug, Parser)]
#[command(name = "tillit", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TILLIT_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data dir: trust roots, nats-server config, admin identity.
    Init(init::Args),
    /// Switch how nats-server authenticates services (`jwt` or `callout`), with `serve` stopped.
    AuthMode(init::AuthModeArgs),
    /// Take over an estate another tool manages: `nsc` (operator, accounts, keys).
    Import(import::Args),
    /// Run the control plane against a running nats-server.
    Serve(serve::Args),
    /// Ask the control plane for its status, as an identity.
    Status(AdminArgs),
    /// Run a local stack: nats-server and the control plane (creates a data dir if missing).
    Dev(dev::Args),
    /// Join tokens (admin).
    Token(token::Args),
    /// Write a `nats` CLI context for an identity dir (URL, creds, certificate, key, CA, inbox prefix).
    Context(context::Args),
    /// Enroll this service with a join token: keys made here, identity dir written.
    Enroll(enroll::Args),
    /// Renew an identity in place (once, or as a daemon).
    Renew(renew::Args),
    /// Benchmarks against a running stack; prints figures.
    Bench(bench::Args),
    /// The audit log: verify its hash chain, show its tail.
    Audit(audit::Args),
    /// Let a service publish or subscribe more subjects, live (admin).
    Grant(grant::ChangeArgs),
    /// Take granted subjects away from a service, live (admin).
    Ungrant(grant::ChangeArgs),
    /// Show a service's permissions (admin).
    Grants(grant::ShowArgs),
    /// Revoke every active identity of a service: connections dropped, never renewed (admin).
    Revoke(revoke::RevokeArgs),
    /// List identities with their state and expiry (admin).
    List(list::ListArgs),
    /// Secrets: put, rotate, list, versions, delete (admin); get (service).
    Secret(secret::Args),
    /// Rotate trust material (admin): `signing-key`.
    Rotate(rotate::Args),
    /// Sites: register one (leaf server config + agent token), list them (admin).
    Site(site::Args),
    /// Run a site agent: apply rotations from the event stream to files, run a hook, acknowledge.
    Agent(agent::Args),
    /// Admins with roles: add one (a join token), list them, revoke one (owners).
    Admin(admin::Args),
    /// Print a one-time URL that opens the read-only dashboard as this admin.
    Dashboard(AdminArgs),
    /// Write the live estate as a document (services' grants, secrets' readers, sites).
    Export(estate::ExportArgs),
    /// Make the live estate what a document says; `--plan` shows the change and makes none.
    Apply(estate::ApplyArgs),
    /// The store: migrate a sled estate to JetStream, make a replica's data dir.
    Store(store::Args),
    /// Answer OCSP next to a hub nats-server from the pre-signed answers (no `serve` needed).
    Responder(responder::Args),
    /// The generated configs: `render` rewrites the hub's server.conf from tillit.toml.
    Config(config::Args),
    /// Back up an estate (while serve runs) into one file, or verify a backup.
    Backup(backup::Args),
    /// Restore a backup into a new data dir.
    Restore(restore::Args),
    /// The break-glass bundle: verify one without using it, rotate it (offline).
    #[command(name = "break-glass")]
    BreakGlass(breakglass::Args),
}

impl Command {
    /// Whether the command runs until stopped (a daemon: serve, the agent, the responder, the
    /// dev stack, benchmarks, `renew --daemon`), rather than doing one thing and exiting.
    pub fn long_running(&self) -> bool {
        match self {
            Command::Serve(_) | Command::Agent(_) | Command::Responder(_) | Command::Dev(_) | Command::Bench(_) => true,
            Command::Renew(r) => r.daemon,
            _ => false,
        }
    }
}

/// How much of a listing to fetch.
#[derive(Debug, Clone, clap::Args)]
pub struct PageArgs {
    /// Fetch one page of at most this many (the next page's cursor is printed); without it,
    /// every page, one after another.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this cursor (the `next` a page printed).
    #[arg(long, requires = "limit")]
    pub after: Option<String>,
}

/// Items per page when the CLI follows every page itself.
const FOLLOW_PAGE: u32 = 1_000;

impl PageArgs {
    /// Fetch what was asked with `fetch(limit, after)`: one page (its items and the next
    /// cursor), or every page followed (all items, no cursor).
    pub async fn fetch<T, F, Fut>(&self, mut fetch: F) -> anyhow::Result<(Vec<T>, Option<String>)>
    where
        F: FnMut(Option<u32>, Option<String>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, Option<String>)>>,
    {
        if self.limit.is_some() {
            return fetch(self.limit, self.after.clone()).await;
        }
        let (mut all, mut after, mut size) = (Vec::new(), None::<String>, FOLLOW_PAGE);
        loop {
            let (items, next) = match fetch(Some(size), after.clone()).await {
                Ok(page) => page,
                // A page too large for the server's max_payload: smaller pages.
                Err(e) if size > 1 && matches!(e.downcast_ref::<crate::client::ClientError>(), Some(crate::client::ClientError::Api(a)) if a.code == crate::error::ErrorCode::LimitExceeded) => {
                    size = (size / 4).max(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            all.extend(items);
            match next {
                Some(n) => after = Some(n),
                None => return Ok((all, None)),
            }
        }
    }

    /// [`PageArgs::fetch`] of verb `E` as `client`: `request` makes a page's request, `split`
    /// takes a reply apart into its items and its `next`.
    pub async fn call<E: crate::proto::Endpoint, T>(
        &self,
        client: &TillitClient,
        request: impl Fn(Option<u32>, Option<String>) -> E::Request,
        split: impl Fn(E::Reply) -> (Vec<T>, Option<String>),
    ) -> anyhow::Result<(Vec<T>, Option<String>)> {
        self.fetch(|limit, after| {
            let req = request(limit, after);
            let split = &split;
            async move { Ok(split(client.call::<E>(req).await?)) }
        })
        .await
    }
}

/// After a page printed as text: where the next one starts.
pub fn say_next(next: &Option<String>) {
    if let Some(n) = next {
        eprintln!("more: --after {n}");
    }
}

/// The flags every call to the control plane takes: who acts, where, and how to print.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Identity dir to act as (an admin's, e.g. DATA/admin).
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    /// NATS URL to use instead of the identity's.
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl AdminArgs {
    /// [`print_json`] when `--json` was given.
    pub fn json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<bool> {
        print_json(self.json, value)
    }

    /// Connect as the identity.
    pub async fn client(&self) -> anyhow::Result<TillitClient> {
        Ok(TillitClient::connect_dir(&IdentityDir::new(&self.identity), self.nats.as_deref()).await?)
    }
}

/// The one JSON printer: with `json`, print `value` as pretty JSON and say so (the caller then
/// prints no text).
/// Open the estate in `dir` for a change made with `serve` stopped, on a sled store (the change's
/// audit record goes to the local log). `command` names the command in a refusal; `then` says,
/// in the "store in use" refusal, what happens after the change.
pub(crate) fn open_offline(dir: &crate::layout::DataDir, clock: crate::clock::SharedClock, command: &str, then: &str) -> anyhow::Result<crate::estate::Estate> {
    let estate = crate::estate::Estate::open(dir.clone(), clock).map_err(|e| match e {
        crate::estate::EstateError::Store(crate::store::StoreError::Locked { .. }) => anyhow::anyhow!("the store is in use: stop `tillit serve` first ({then})"),
        e => e.into(),
    })?;
    if !matches!(estate.config.store, crate::config::StoreBackend::Sled) {
        anyhow::bail!("{command} works on a sled store only for now (its audit record goes to the local log)");
    }
    Ok(estate)
}

pub fn print_json<T: serde::Serialize>(json: bool, value: &T) -> anyhow::Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(json)
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Import(a) => import::run(a),
        Command::Serve(a) => serve::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Dev(a) => dev::run(a).await,
        Command::Token(a) => token::run(a).await,
        Command::Context(a) => context::run(a),
        Command::Enroll(a) => enroll::run(a).await,
        Command::Renew(a) => renew::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Audit(a) => audit::run(a),
        Command::Store(a) => store::run(a).await,
        Command::Responder(a) => responder::run(a).await,
        Command::Config(a) => tokio::task::block_in_place(|| config::run(a)),
        Command::Backup(a) => backup::run(a).await,
        Command::Restore(a) => restore::run(a).await,
        Command::BreakGlass(a) => breakglass::run(a).await,
        Command::Grant(a) => grant::grant(a, false).await,
        Command::Ungrant(a) => grant::grant(a, true).await,
        Command::Grants(a) => grant::grants(a).await,
        Command::Admin(a) => admin::run(a).await,
        Command::Dashboard(a) => dashboard::run(a).await,
        Command::Export(a) => estate::export(a).await,
        Command::AuthMode(a) => init::auth_mode(a),
        Command::Apply(a) => estate::apply(a).await,
        Command::Revoke(a) => revoke::revoke(a).await,
        Command::List(a) => list::run(a).await,
        Command::Secret(a) => secret::run(a).await,
        Command::Rotate(a) => rotate::run(a).await,
        Command::Site(a) => site::run(a).await,
        Command::Agent(a) => agent::run(a).await,
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupted"),
        _ = term => tracing::info!("terminated"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
