//! Pushing account JWTs to nats-server (`$SYS.REQ.CLAIMS.UPDATE` from a SYS user).
//!
//! The full resolver stores what it is sent and applies it at once. It does not check `iat`
//! order, so callers hold [`Estate::account_lock`](crate::estate::Estate::account_lock) and push
//! only the JWT they just stored.

use crate::subjects;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("no reply from nats-server to the account update of {account} (is the SYS connection up?)")]
    Timeout { account: String },
    #[error("nats-server refused the account update of {account}: {reason}")]
    Refused { account: String, reason: String },
    #[error("account update of {account}: {reason}")]
    Transport { account: String, reason: String },
}

/// Push one account JWT; returns once a server has stored it.
pub async fn push_account(sys: &async_nats::Client, account: &str, jwt: &str) -> Result<(), PushError> {
    let req = async_nats::Request::new().payload(jwt.to_string().into()).timeout(Some(Duration::from_secs(5)));
    let msg = sys.send_request(subjects::SYS_CLAIMS_UPDATE.to_string(), req).await.map_err(|e| {
        if matches!(e.kind(), async_nats::RequestErrorKind::TimedOut) {
            PushError::Timeout { account: account.into() }
        } else {
            PushError::Transport { account: account.into(), reason: e.to_string() }
        }
    })?;
    let v: serde_json::Value = serde_json::from_slice(&msg.payload)
        .map_err(|e| PushError::Transport { account: account.into(), reason: format!("unreadable reply: {e}") })?;
    if let Some(err) = v.get("error") {
        let reason = err
            .get("description")
            .and_then(|d| d.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(PushError::Refused { account: account.into(), reason });
    }
    match v.pointer("/data/code").and_then(|c| c.as_i64()) {
        Some(200) => Ok(()),
        other => Err(PushError::Refused { account: account.into(), reason: format!("unexpected reply code {other:?}: {v}") }),
    }
}
