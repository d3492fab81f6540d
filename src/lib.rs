//! # tillit — a NATS-native trust control plane
//!
//! tillit owns the trust roots of a NATS estate (operator, accounts, an internal X.509 CA), gives
//! every service a strong identity over NATS request-reply, and serves it all over NATS itself.
//!
//! ## Using the library
//! A service loads the identity dir `tillit enroll` wrote and connects; the session renews
//! itself and keeps the same `async_nats::Client` valid across renewals:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tillit::ClientError> {
//! let session = tillit::Identity::load("./orders")?.connect().await?;
//! let password = session.secret("db-password").await?;     // sealed to this identity end to end
//! session.client().publish("shop.orders.created", "o-1".into()).await.ok();
//! # drop(password); Ok(()) }
//! ```
//!
//! The public interface is what this page lists: the re-exports below ([`Identity`],
//! [`Session`], [`TillitClient`], [`Agent`], [`serve`], the error types), the wire contract
//! ([`proto`]: every verb as a type; [`subjects`]: every subject, header and event kind;
//! [`envelope`]: the signed events and their verification; [`error`]: the wire error codes) and
//! the [`client`] it is called with. Modules marked hidden are reachable for the `tillit`
//! binary, the integration tests and the fuzz targets; they are not a stable interface.
//!
//! ## Layout
//! A verb lives in three files: its type in `proto/<family>.rs`, its handler in
//! `server/<family>.rs` (one `serve_verbs!` line), its command in `cli/<verb>.rs`.
//!
//! - **The contract**: `proto/` (signed requests, [`proto::Endpoint`], [`proto::ENDPOINTS`]; one
//!   file per family: status, enroll, admin, secret, site, ca), `subjects.rs` (every subject,
//!   header and event kind, with their parsers), `envelope.rs`, `error.rs`, `layout.rs` (every file
//!   name of the data, identity and site dirs).
//! - **Policy** (`policy/`): every pure decision, table-tested: when to renew, grant arithmetic,
//!   who may read a secret, who may call a verb, whether a join token may enroll.
//! - **The estate** (`estate/`): the trust roots and the only code that builds store writes, by
//!   capability: accounts, identities, tokens, roles, secrets, envelope keys, sites, CAs. Below
//!   it: `store/` (the `Store` trait, sled, the sealing `Vault`), `crypto.rs`, `issuer/` (pure
//!   minting and parsing of NATS JWTs, X.509 and `.creds`), `names.rs`, `token.rs`, `secrets.rs`,
//!   `identity.rs` (the identity dir), `pem.rs`, `fsutil.rs` (atomic file and directory writes).
//! - **The control plane** (`server/`): `serve()` a short list of steps; `dispatch.rs` (the
//!   checks every request passes, routes made from `ENDPOINTS`), one file per family, `tasks.rs`
//!   (every periodic job, by name), `own.rs` (its own credentials), `accounts.rs` (JWT pushes),
//!   `reconcile.rs`, `stream.rs` (signed events), `events.rs` (nats-server auth failures),
//!   `http.rs` (health, OCSP, CRL, metrics), `micro.rs` (the NATS micro service protocol), `backup.rs` (the backup socket). `audit/` is its
//!   authenticated, hash-chained redo log; `backup/` the backup format, snapshots and restore.
//! - **The edges**: `client/` (connect as an identity, one signed caller, enrollment, the
//!   self-renewing session; no path to the estate), `agent/` (the site agent: decide, apply,
//!   the site server's certificate), `init.rs` (also `tillit import nsc`, reading the nsc store with
//!   `nsc.rs` and taking it over with `estate/adopt.rs`), `natsconf.rs` (nats-server configs), `cli/` (one
//!   file per subcommand; shared flags and the JSON printer in `cli/mod.rs`), `bench/`.
//! - Small pieces: `clock.rs` (injected time), `replay.rs`, `telemetry.rs`, `natsbin.rs`, `natscontext.rs` (a `nats` CLI context for an identity); `ocsp/` (OCSP answers signed on request or ahead of time, a responder's copy of the `TILLIT_OCSP` bucket, its follower and its HTTP face).
//!
//! See `README.md` for a quick start and `../DESIGN.md` (shared) for the architecture.

// Data from the wire, disk or user never reaches unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs, unreachable_pub)]

// === the public interface ===

pub use agent::{Agent, AgentError, AgentOptions};
pub use client::session::Session;
pub use client::{ClientError, Identity, TillitClient};
pub use envelope::{TrustSet, Verifier};
pub use error::{ApiError, ErrorCode};
pub use estate::{Estate, EstateError};
pub use names::ServiceId;
pub use server::{serve, ServeError};

pub mod client;
pub mod envelope;
pub mod error;
pub mod proto;
pub mod service;
pub mod subjects;

// === internals (see the crate docs) ===

/// Modules the `tillit` binary, the integration tests and the fuzz targets reach; hidden from the
/// docs, not a stable interface.
macro_rules! internal {
    ($($m:ident),* $(,)?) => { $( #[doc(hidden)] pub mod $m; )* };
}
internal!(
    agent, audit, backup, breakglass, cli, clock, config, crypto, estate, identity, issuer, layout, names, natsbin, natscontext, nsc, ocsp, server, store, token, telemetry, secrets, pem, policy
);
mod bench;
mod fsutil;
mod init;
mod natsconf;
mod replay;
