//! Anti-rollback: every account JWT the hub serves is the control plane's current one.
//!
//! nats-server's full resolver stores any operator-signed account JWT it is sent, whatever its
//! `iat`: an old JWT pushed again (or a resolver directory restored from a backup) would bring
//! back revoked users, former grants and retired role keys, and nothing in the server notices.
//! So every [`Config::reconcile_interval`](crate::config::Config) the control plane looks up
//! each account as the hub serves it (`$SYS.REQ.ACCOUNT.<key>.CLAIMS.LOOKUP`) and, when it is
//! missing, older, or any other JWT than the stored one, pushes the stored one again, records
//! `account.rollback` in the audit log and counts `tillit_account_rollbacks_total`. A push that
//! failed after its change was recorded is completed here too.

use super::{accounts, Ctx};
use crate::audit::Entry;
use crate::estate::{AccountRecord, BOOTSTRAP_ACCOUNT};
use crate::issuer::jwt;
use std::time::Duration;

/// What the hub answered for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The stored JWT.
    Current,
    /// No JWT at all.
    Missing,
    /// Another JWT, with its `iat` and `jti` when readable.
    Other { iat: Option<i64>, jti: Option<String> },
}

/// Compare what the hub served with the stored account (pure).
pub fn judge(stored: &AccountRecord, served: &str) -> Served {
    if served.is_empty() {
        return Served::Missing;
    }
    if served == stored.jwt {
        return Served::Current;
    }
    match jwt::decode_any::<serde_json::Value>(served) {
        Ok((c, _)) => Served::Other { iat: c["iat"].as_i64(), jti: c["jti"].as_str().map(str::to_string) },
        Err(_) => Served::Other { iat: None, jti: None },
    }
}

/// Look up `account_public_key` as the hub serves it (`None`: no answer).
async fn lookup(ctx: &Ctx, account_public_key: &str) -> Option<String> {
    let req = async_nats::Request::new().payload("".into()).timeout(Some(Duration::from_secs(2)));
    match ctx.sys.send_request(crate::subjects::account_lookup(account_public_key), req).await {
        Ok(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
        Err(e) => {
            tracing::debug!(account = account_public_key, "account lookup: {e}");
            None
        }
    }
}

/// Check every account once; returns how many were re-pushed.
pub async fn check_all(ctx: &Ctx) -> usize {
    let accounts = match ctx.estate.accounts() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("reconcile: cannot list accounts: {e}");
            return 0;
        }
    };
    let mut repaired = 0;
    for acct in accounts {
        // BOOTSTRAP's JWT is derived from the live revocations and re-pushed by the revoker.
        if acct.name == BOOTSTRAP_ACCOUNT {
            continue;
        }
        let Some(served) = lookup(ctx, &acct.public_key).await else { continue };
        if judge(&acct, &served) == Served::Current {
            continue;
        }
        // Look again under the account lock: a change may have been between store and push.
        // The record as the store holds it now, not as this replica's copy last saw it (with
        // several replicas, a copy that lags must not push an older JWT over a newer one).
        let _g = ctx.estate.account_lock().lock().await;
        let Ok(stored) = ctx.estate.account_fresh(&acct.name) else { continue };
        let Some(served) = lookup(ctx, &stored.public_key).await else { continue };
        let verdict = judge(&stored, &served);
        if verdict == Served::Current {
            continue;
        }
        let older = matches!(&verdict, Served::Other { iat: Some(i), .. } if *i < stored.iat);
        if matches!(&verdict, Served::Other { iat: Some(i), .. } if *i > stored.iat) {
            // Newer than the store's: another replica's push this one's store has not seen yet.
            tracing::info!(account = %stored.name, ?verdict, stored_iat = stored.iat, "nats-server serves a newer account JWT than this replica knows; left alone");
            continue;
        }
        tracing::warn!(account = %stored.name, ?verdict, stored_iat = stored.iat, "nats-server serves another account JWT than the current one; pushing the current one again");
        ctx.metrics.account_rollbacks.inc();
        let (served_iat, served_jti) = match &verdict {
            Served::Other { iat, jti } => (*iat, jti.clone()),
            _ => (None, None),
        };
        let pushed = accounts::push(ctx, &stored, "reconcile").await.is_ok();
        let entry = Entry {
            actor: "tillit".into(),
            action: "account.rollback".into(),
            target: stored.name.clone(),
            outcome: if pushed { "repaired".into() } else { "denied:unavailable".into() },
            detail: Some(serde_json::json!({
                "served": match verdict { Served::Missing => "missing", _ if older => "older", _ => "other" },
                "served_iat": served_iat, "served_jti": served_jti, "stored_iat": stored.iat,
                "account_public_key": stored.public_key,
            })),
            ..Default::default()
        };
        ctx.journal.record_relaxed(entry);
        if pushed {
            repaired += 1;
        }
    }
    repaired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_served_jwts() {
        let signer = nkeys::KeyPair::new_operator();
        let mk = |iat: i64| {
            let c = serde_json::json!({ "jti": format!("J{iat}"), "iat": iat, "iss": signer.public_key(), "sub": "A", "nats": {} });
            jwt::encode_any(&c, &signer).unwrap()
        };
        let stored = AccountRecord {
            name: "acme-prod".into(),
            kind: crate::estate::AccountKind::Tenant,
            adopted: None,
            public_key: "A".into(),
            signing_key: "A".into(),
            jwt: mk(200),
            iat: 200,
            created_at: 0,
            tenant: None,
            env: None,
            revocations: Default::default(),
            revoked_until: Default::default(),
            callout_epochs: Default::default(),
        };
        assert_eq!(judge(&stored, &stored.jwt), Served::Current);
        assert_eq!(judge(&stored, ""), Served::Missing);
        assert_eq!(judge(&stored, &mk(100)), Served::Other { iat: Some(100), jti: Some("J100".into()) });
        assert_eq!(judge(&stored, &mk(300)), Served::Other { iat: Some(300), jti: Some("J300".into()) });
        assert_eq!(judge(&stored, "garbage"), Served::Other { iat: None, jti: None });
    }
}
