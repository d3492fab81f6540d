//! Every pure decision of tillit, in one place and table-tested (house rule 7). The async code
//! around them fetches, applies and reports; it does not decide.
//!
//! - `renew`: when a credential is renewed (services, agents, the site server, the control
//!   plane's own), and how a failed renewal is retried.
//! - `grants`: which subjects may be granted, and what a grant or ungrant makes of a role's
//!   permissions.
//! - `readers`: who may read a secret.
//! - `caller`: whether an identity may call an endpoint now.
//! - `tokens`: whether a presented join token may enroll.
//! - [`lease`]: which replica leads, with which fencing token.
//! - `revocation`: the CRL reason code of a revocation.
//! - [`plan`]: what `tillit apply` changes to make the live estate a document.
//! - [`roles`]: which admin role may call which verb, and how far a tenant-confined admin reaches.

pub(crate) mod caller;
pub(crate) mod grants;
pub mod lease;
pub(crate) mod readers;
pub(crate) mod renew;
pub(crate) mod revocation;
pub mod plan;
pub mod roles;
pub(crate) mod tokens;

pub(crate) use caller::{check_caller, CallerFacts};
pub(crate) use revocation::crl_reason;
pub(crate) use readers::{may_read, site_may_read};
pub(crate) use tokens::{check_token, TokenRefusal};
