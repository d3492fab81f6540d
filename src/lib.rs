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

pub mod agent;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod estate;
pub mod fsutil;
pub mod identity;
pub mod init;
pub mod issuer;
pub mod layout;
pub mod names;
pub mod natsbin;
pub mod natsconf;
pub mod ocsp;
pub mod pem;
pub mod policy;
pub mod proto;
pub mod replay;
pub mod secrets;
pub mod server;
pub mod store;
pub mod subjects;
pub mod token;
pub mod telemetry;
