//! # tillit — a NATS-native trust control plane
//!
//! tillit owns the trust roots of a NATS estate (operator, accounts, an internal X.509 CA), gives
//! every service a strong identity over NATS request-reply, and serves it all over NATS itself.
//!
//! ## Layout
//! - [`cli`]: one file per subcommand; thin.
//! - [`init`]: creating a data dir, all or nothing. [`estate`]: the trust roots and operations on
//!   them (accounts, users, certificates, identity records).
//! - [`issuer`]: pure minting and parsing: NATS JWTs, X.509, `.creds`.
//! - [`store`]: the `Store` trait, sled backend, sealing [`store::Vault`]. [`crypto`]: master key,
//!   sealing, secrets in memory.
//! - [`server`]: the control plane (`tillit serve`): NATS micro service, HTTP health/metrics.
//! - [`client`]: connecting as an identity (mutual TLS + JWT), signed request-reply.
//! - [`proto`]: wire types; [`subjects`]: every subject; [`error`]: wire error codes;
//!   [`layout`]: every file name; [`natsconf`]: the nats-server config.
//! - [`clock`], [`rotation`], [`replay`], [`names`]: small pure pieces, table-tested.
//!
//! See `README.md` for a quick start and `../DESIGN.md` (shared) for the architecture.

// Data from the wire, disk or user never reaches unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod envelope;
pub mod error;
pub mod proto;
pub mod subjects;

#[doc(hidden)]
pub mod agent;
#[doc(hidden)]
pub mod audit;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod clock;
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod crypto;
#[doc(hidden)]
pub mod estate;
#[doc(hidden)]
pub mod identity;
#[doc(hidden)]
pub mod issuer;
#[doc(hidden)]
pub mod layout;
#[doc(hidden)]
pub mod names;
#[doc(hidden)]
pub mod natsbin;
#[doc(hidden)]
pub mod ocsp;
#[doc(hidden)]
pub mod server;
#[doc(hidden)]
pub mod store;
#[doc(hidden)]
pub mod token;
#[doc(hidden)]
pub mod telemetry;
#[doc(hidden)]
pub mod secrets;
#[doc(hidden)]
pub mod init;
#[doc(hidden)]
pub mod natsconf;
#[doc(hidden)]
pub mod policy;
#[doc(hidden)]
pub mod replay;
#[doc(hidden)]
pub mod pem;
#[doc(hidden)]
pub mod fsutil;
mod bench;
