//! Request handlers: the common checks every request passes ([`dispatch`]), then one function per
//! verb.

use super::{services, After, Caller, Ctx, EndpointSpec};
use crate::clock::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::estate::{AccountKind, IdentityRecord, IdentityState};
use crate::identity::IdentityKind;
use crate::proto::{self, AccountStatus, Counts, StatusReply, StatusRequest};
use crate::replay::Seen;
use crate::subjects;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// The checks every request passes, then the verb.
pub async fn dispatch(
    ctx: &Ctx,
    spec: &EndpointSpec,
    msg: &async_nats::Message,
) -> Result<(Box<RawValue>, Option<After>), ApiError> {
    let max = ctx.estate.config.max_request_bytes;
    if msg.payload.len() > max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("request is {} bytes; the limit is {max}", msg.payload.len()),
        ));
    }
    let now = ctx.estate.clock().now_unix();
    let claims = proto::verify_request::<Box<RawValue>>(&msg.payload, spec.subject, spec.kind, ctx.estate.trust_domain(), now)?;
    let info = services::request_info(msg)?;
    // The replay cache takes an id only once the signer is known (an identity of this control
    // plane, or a join token's bootstrap connection), so unknown keys cannot fill it.
    let check_replay = || -> Result<(), ApiError> {
        if !ctx.replay.issued_in_time(claims.iat) {
            return Err(ApiError::new(ErrorCode::Replayed, "this request was signed before the control plane restarted; sign it again"));
        }
        match ctx.replay.check_and_insert_by(&claims.jti, &claims.iss, claims.exp, now) {
            Seen::New => Ok(()),
            Seen::Replay => Err(ApiError::new(ErrorCode::Replayed, "this request id was already used")),
            Seen::Full => Err(super::unavailable("too many requests in flight; retry shortly")),
            Seen::SignerQuota => Err(ApiError::new(
                ErrorCode::LimitExceeded,
                "this identity sent more requests in the last minute than one identity may; slow down",
            )),
        }
    };
    if spec.caller == Caller::Enrollee {
        if info.as_ref().map(|i| i.acc.as_str()) != Some(ctx.bootstrap_account.as_str()) {
            return Err(ApiError::unauthenticated("enrollment must come from a join token's bootstrap connection"));
        }
        check_replay()?;
        let body = body(&claims.body)?;
        return match services::enroll(ctx, &claims.iss, info.as_ref(), body).await {
            Ok((r, a)) => Ok((to_value(r)?, Some(a))),
            Err(e) => {
                audit_refusal(ctx, &format!("nkey:{}", claims.iss), spec, &e);
                Err(e)
            }
        };
    }
    let caller = ctx
        .estate
        .identity(&claims.iss)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::unauthenticated("the signing key belongs to no identity of this control plane"))?;
    check_replay()?;
    if let Err(e) = check_caller(&caller, spec, now).and_then(|_| services::check_request_origin(ctx, &caller, info.as_ref())) {
        audit_refusal(ctx, &caller.id, spec, &e);
        return Err(e);
    }
    let value = match spec.subject {
        subjects::ADMIN_STATUS => {
            let _req: StatusRequest = body(&claims.body)?;
            let mut st = status(ctx, &caller)?;
            st.sites = super::sites::site_infos(ctx).await?;
            st.ca_rollout = super::carot::rollout_info(ctx).await?;
            to_value(st)?
        }
        subjects::ADMIN_TOKEN_CREATE => to_value(services::token_create(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::SVC_RENEW => to_value(services::renew(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_GRANT => to_value(super::admin::grant(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_UNGRANT => to_value(super::admin::ungrant(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_GRANTS => to_value(super::admin::grants(ctx, body(&claims.body)?).await?)?,
        subjects::ADMIN_REVOKE => to_value(super::admin::revoke(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_ROTATE_SIGNING_KEY => to_value(super::admin::rotate_signing_key(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_SECRET_PUT => to_value(super::secrets::put(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_SECRET_ROTATE => to_value(super::secrets::rotate(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_SECRET_LIST => to_value(super::secrets::list(ctx, body(&claims.body)?).await?)?,
        subjects::ADMIN_SECRET_VERSIONS => to_value(super::secrets::versions(ctx, body(&claims.body)?).await?)?,
        subjects::ADMIN_SECRET_DELETE => to_value(super::secrets::delete(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::SVC_SECRET_GET => to_value(super::secrets::get(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::SVC_ACK => to_value(super::sites::ack(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_ROTATE_CA => {
            let req: crate::proto::RotateCaRequest = body(&claims.body)?;
            if req.finish {
                to_value(super::carot::finish(ctx, &caller).await?)?
            } else {
                to_value(super::carot::rotate(ctx, &caller).await?)?
            }
        }
        subjects::SVC_SITE_RENEW => to_value(super::sites::renew(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_SITE_REMOVE => to_value(super::sites::remove(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_SITE_ADD => to_value(super::sites::add(ctx, &caller, body(&claims.body)?).await?)?,
        subjects::ADMIN_SITE_LIST => {
            let _req: crate::proto::SiteListRequest = body(&claims.body)?;
            to_value(super::sites::list(ctx).await?)?
        }
        subjects::ADMIN_LIST => {
            let _req: crate::proto::ListRequest = body(&claims.body)?;
            to_value(super::admin::list(ctx).await?)?
        }
        other => return Err(ApiError::new(ErrorCode::NotFound, format!("no handler for {other}"))),
    };
    Ok((value, None))
}

/// The verb of a subject, as the audit log names it: `status`, `token.create`, `enroll`, `renew`.
pub fn verb(subject: &str) -> &str {
    let s = subject.strip_prefix("tillit.v1.").unwrap_or(subject);
    s.strip_prefix("admin.").or_else(|| s.strip_prefix("svc.")).unwrap_or(s)
}

/// Record a refusal that matters (who was denied what), without holding up the reply.
fn audit_refusal(ctx: &Ctx, actor: &str, spec: &EndpointSpec, e: &ApiError) {
    let worth_recording = matches!(
        e.code,
        ErrorCode::Forbidden | ErrorCode::TokenUsed | ErrorCode::TokenExpired | ErrorCode::TokenInvalid | ErrorCode::Unauthenticated
    );
    if !worth_recording {
        return;
    }
    ctx.journal.record_relaxed(
        crate::audit::Entry::denied(actor, verb(spec.subject), spec.subject, e.code.as_str()).detail(serde_json::json!({ "message": e.message })),
    );
}

/// Whether `caller` may call `spec` now (pure).
pub fn check_caller(caller: &IdentityRecord, spec: &EndpointSpec, now: i64) -> Result<(), ApiError> {
    if caller.state == IdentityState::Revoked {
        return Err(ApiError::forbidden("this identity is revoked; enroll again with a new join token"));
    }
    if caller.expires_at <= now {
        return Err(ApiError::new(ErrorCode::Expired, "this identity has expired; enroll again with a new join token"));
    }
    if spec.caller == Caller::Admin && caller.kind != IdentityKind::Admin {
        return Err(ApiError::forbidden(format!("{} is for admin identities only", spec.subject)));
    }
    Ok(())
}

/// The request body, parsed once into its type (the envelope keeps it raw).
pub(super) fn body<T: DeserializeOwned>(v: &RawValue) -> Result<T, ApiError> {
    serde_json::from_str(v.get()).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// A reply, encoded once.
pub(super) fn to_value<T: serde::Serialize>(t: T) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(&t).map_err(ApiError::internal)
}

/// Refresh the gauges that mirror store counts (one scan of each space).
pub fn refresh_gauges(ctx: &Ctx) {
    if let (Ok(accounts), Ok(ids)) = (ctx.estate.accounts(), ctx.estate.identities()) {
        set_gauges(ctx, accounts.len(), &ids);
    }
}

/// Set the gauges from records already read.
fn set_gauges(ctx: &Ctx, accounts: usize, ids: &[IdentityRecord]) {
    let now = ctx.estate.clock().now_unix();
    ctx.metrics.identities.set(ids.len() as i64);
    ctx.metrics.accounts.set(accounts as i64);
    let soon = ids.iter().filter(|i| i.state == IdentityState::Active && i.expires_at > now && i.expires_at <= now + 86_400).count();
    ctx.metrics.identities_expiring_24h.set(soon as i64);
    if let Ok(exp) = crate::issuer::x509::not_after(ctx.estate.ca().cert_pem()) {
        ctx.metrics.ca_expiry_seconds.set(exp - ctx.estate.clock().now_unix());
    }
}

fn status(ctx: &Ctx, caller: &IdentityRecord) -> Result<StatusReply, ApiError> {
    let e = &ctx.estate;
    let accounts = e.accounts().map_err(ApiError::internal)?;
    let all = e.identities().map_err(ApiError::internal)?;
    let now = e.clock().now_unix();
    let by_state = |st: &str| all.iter().filter(|r| super::admin::state_of(r, now) == st).count();
    set_gauges(ctx, accounts.len(), &all);
    Ok(StatusReply {
        trust_domain: e.trust_domain().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        server_time: rfc3339(e.clock().now_unix()),
        operator: e.meta.operator_public_key.clone(),
        ca_fingerprint: e.ca_fingerprint(),
        ca_expires_at: crate::issuer::x509::not_after(e.ca().cert_pem()).map(rfc3339).unwrap_or_default(),
        nats_urls: e.config.urls(),
        counts: Counts {
            identities: all.len(),
            active: by_state("active"),
            revoked: by_state("revoked"),
            expired: by_state("expired"),
            accounts: accounts.len(),
            tenant_accounts: accounts.iter().filter(|a| a.kind == AccountKind::Tenant).count(),
        },
        accounts: accounts
            .into_iter()
            .map(|a| {
                (a.name.clone(), AccountStatus { public_key: a.public_key, kind: a.kind.as_str().into(), created_at: rfc3339(a.created_at) })
            })
            .collect(),
        sites: vec![],
        cas: super::carot::ca_infos(e),
        ca_rollout: None,
        rss_bytes: crate::telemetry::rss_bytes(),
        caller: caller.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: IdentityKind, state: IdentityState, expires_at: i64) -> IdentityRecord {
        IdentityRecord { kind, state, ..IdentityRecord::admin("spiffe://td/x", "x", "U", "01", 0, expires_at) }
    }

    #[test]
    fn verbs_match_the_cli_words() {
        assert_eq!(verb("tillit.v1.admin.status"), "status");
        assert_eq!(verb("tillit.v1.admin.token.create"), "token.create");
        assert_eq!(verb("tillit.v1.enroll"), "enroll");
        assert_eq!(verb("tillit.v1.svc.renew"), "renew");
    }

    #[test]
    fn caller_policy_table() {
        let admin_ep = EndpointSpec { subject: "tillit.v1.admin.status", kind: "k", caller: Caller::Admin };
        let svc_ep = EndpointSpec { subject: "tillit.v1.svc.renew", kind: "k", caller: Caller::Identity };
        let cases = [
            (rec(IdentityKind::Admin, IdentityState::Active, 100), admin_ep, None),
            (rec(IdentityKind::Service, IdentityState::Active, 100), admin_ep, Some(ErrorCode::Forbidden)),
            (rec(IdentityKind::Agent, IdentityState::Active, 100), admin_ep, Some(ErrorCode::Forbidden)),
            (rec(IdentityKind::Service, IdentityState::Active, 100), svc_ep, None),
            (rec(IdentityKind::Admin, IdentityState::Revoked, 100), admin_ep, Some(ErrorCode::Forbidden)),
            (rec(IdentityKind::Service, IdentityState::Active, 50), svc_ep, Some(ErrorCode::Expired)),
        ];
        for (r, ep, want) in cases {
            let got = check_caller(&r, &ep, 50).err().map(|e| e.code);
            assert_eq!(got, want, "{:?} {:?} on {}", r.kind, r.state, ep.subject);
        }
    }
}
