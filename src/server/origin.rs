//! Where a request came from: the account and user nats-server stamps on a request that
//! crossed a service import, checked against the signer's own.

use super::Ctx;
use crate::error::ApiError;
use crate::estate::{IdentityRecord, TILLIT_ACCOUNT};
use crate::subjects;
use serde::Deserialize;

/// The caller as nats-server stamps it on requests that cross a service import
/// (`Nats-Request-Info`, trustworthy from nats-server 2.12.6 on).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RequestInfo {
    /// The requester's account (public key in operator mode).
    pub acc: String,
    /// The requester's user public key (JWT users).
    #[serde(default)]
    pub user: Option<String>,
}

/// Parse `Nats-Request-Info`, if present. nats-server stamps it when a request crosses a
/// service import, and then always rewrites the reply subject to one of its own (`_R_.…`); but
/// inside the TILLIT account nothing stops a publisher from sending the header itself. So a
/// header on a request whose reply is not a service-import reply was forged, and is refused.
pub(super) fn request_info(msg: &async_nats::Message) -> Result<Option<RequestInfo>, ApiError> {
    let Some(h) = msg.headers.as_ref().and_then(|h| h.get(subjects::HDR_REQUEST_INFO)) else {
        return Ok(None);
    };
    if !msg.reply.as_deref().is_some_and(subjects::is_service_reply) {
        return Err(ApiError::unauthenticated("Nats-Request-Info on a request that did not cross a service import"));
    }
    serde_json::from_str(h.as_str())
        .map(Some)
        .map_err(|_| ApiError::bad_request("Nats-Request-Info header is malformed"))
}

/// An account's public key by name (it never changes; cached).
fn account_key(ctx: &Ctx, name: &str) -> Result<String, ApiError> {
    if let Some(k) = ctx.cache.account_keys.read().ok().and_then(|m| m.get(name).cloned()) {
        return Ok(k);
    }
    let key = ctx.estate.account(name).map_err(ApiError::from)?.public_key;
    if let Ok(mut m) = ctx.cache.account_keys.write() {
        m.insert(name.to_string(), key.clone());
    }
    Ok(key)
}

/// A request must come from the signer's own account: through the service import (the server
/// stamps the account and user), or, for identities of the TILLIT account, from inside it.
pub(super) fn check_request_origin(ctx: &Ctx, caller: &IdentityRecord, info: Option<&RequestInfo>) -> Result<(), ApiError> {
    let acct_key = account_key(ctx, &caller.account)?;
    match info {
        Some(i) => {
            if i.acc != acct_key {
                tracing::warn!(caller = %caller.user_public_key, account = %caller.account, expected = %acct_key, stamped = %i.acc, "a request's account is not its signer's");
                return Err(ApiError::unauthenticated("request was sent from another account than the signer's"));
            }
            if let Some(u) = &i.user {
                if u != &caller.user_public_key {
                    return Err(ApiError::unauthenticated("request was sent by another user than the signer"));
                }
            }
            Ok(())
        }
        None if caller.account == TILLIT_ACCOUNT => Ok(()),
        None => Err(ApiError::unauthenticated("request did not arrive through the tillit service import")),
    }
}

