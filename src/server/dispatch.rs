//! Dispatch: the checks every request passes, then its verb's handler.
//!
//! The table of routes is made from [`proto::ENDPOINTS`]' one list ([`routes`]): a verb without a
//! [`Handle`] impl does not compile. Each handler lives in its family's file (`status.rs`,
//! `enroll.rs`, `admin.rs`, `secrets.rs`, `sites.rs`, `ca.rs`).

use super::{origin, replies, After, Ctx};
use crate::error::{ApiError, ErrorCode};
use crate::estate::IdentityRecord;
use crate::proto::{self, Caller, Endpoint, EndpointSpec};
use crate::replay::Seen;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::future::Future;
use std::sync::Arc;

/// What a handler knows of the request it serves, besides its body.
pub(crate) struct Call {
    /// The verified signer's public nkey.
    pub(crate) signer: String,
    /// The recorded identity that signed it (none only for enrollment, [`Caller::Enrollee`]).
    caller: Option<IdentityRecord>,
    /// The caller's account and user, as nats-server stamped them on a request that crossed a
    /// service import.
    pub(crate) info: Option<origin::RequestInfo>,
    /// Work to do once the reply is sent.
    pub(crate) after: Option<After>,
    /// An admin caller's role and tenants (checked against the verb before its handler runs).
    pub(crate) access: Option<crate::policy::roles::Access>,
    /// What the request reached, once its body was read.
    pub(crate) reach: Option<proto::Reach>,
}

impl Call {
    /// An admin caller's role and tenants.
    pub(crate) fn access(&self) -> Result<&crate::policy::roles::Access, ApiError> {
        self.access.as_ref().ok_or_else(|| ApiError::internal("this verb needs an admin caller"))
    }

    /// The identity that signed the request.
    pub(crate) fn caller(&self) -> Result<&IdentityRecord, ApiError> {
        self.caller.as_ref().ok_or_else(|| ApiError::internal("this verb needs a recorded caller"))
    }
}

/// How the control plane serves verb `E`: one impl per verb, in its family's file.
pub(crate) trait Handle: Endpoint {
    /// Serve one request whose common checks passed.
    fn handle(ctx: &Arc<Ctx>, call: &mut Call, req: Self::Request) -> impl Future<Output = Result<Self::Reply, ApiError>> + Send;
}

/// Serve verbs with functions of their family's file: `Grant(caller) => grant` calls
/// `grant(ctx, caller, req)`; `Grants => grants` calls `grants(ctx, req)`.
macro_rules! serve_verbs {
    ($($verb:ident $(($who:ident))? => $f:ident),* $(,)?) => {$(
        impl $crate::server::dispatch::Handle for $crate::proto::$verb {
            async fn handle(
                ctx: &std::sync::Arc<$crate::server::Ctx>,
                call: &mut $crate::server::dispatch::Call,
                req: <Self as $crate::proto::Endpoint>::Request,
            ) -> Result<<Self as $crate::proto::Endpoint>::Reply, $crate::error::ApiError> {
                serve_verbs!(@call $f, ctx, call, req $(, $who)?)
            }
        }
    )*};
    (@call $f:ident, $ctx:ident, $call:ident, $req:ident, call) => {
        $f($ctx, $call, $req).await
    };
    (@call $f:ident, $ctx:ident, $call:ident, $req:ident) => {{
        let _ = &$call;
        $f($ctx, $req).await
    }};
    (@call $f:ident, $ctx:ident, $call:ident, $req:ident, caller) => {
        $f($ctx, $call.caller()?, $req).await
    };
}

type Run = for<'a> fn(&'a Arc<Ctx>, &'a mut Call, &'a RawValue) -> BoxFuture<'a, Result<Box<RawValue>, ApiError>>;

fn run<'a, E: Handle>(ctx: &'a Arc<Ctx>, call: &'a mut Call, raw: &'a RawValue) -> BoxFuture<'a, Result<Box<RawValue>, ApiError>> {
    Box::pin(async move {
        let req: E::Request = body(raw)?;
        // An admin verb: the caller's role must allow it, on what the request reaches.
        let reach = proto::Reaches::reach(&req);
        if E::CALLER == Caller::Admin {
            let access = call.access.as_ref().ok_or_else(|| ApiError::internal("an admin verb without the caller's access"))?;
            let allowed = crate::policy::roles::authorize(access, E::SUBJECT, &reach);
            call.reach = Some(reach);
            allowed?;
        }
        to_value(E::handle(ctx, call, req).await?)
    })
}

/// One verb as served: what it is, and its handler.
#[derive(Clone, Copy)]
pub(crate) struct Route {
    pub(crate) spec: EndpointSpec,
    run: Run,
}

macro_rules! routes {
    ($($e:ident),*) => { vec![$(Route { spec: <proto::$e as Endpoint>::SPEC, run: run::<proto::$e> }),*] };
}

/// Every verb's route, in [`proto::ENDPOINTS`] order.
pub(crate) fn routes() -> Vec<Route> {
    proto::for_each_endpoint!(routes)
}

/// The checks every request passes, then the verb.
pub(crate) async fn dispatch(ctx: &Arc<Ctx>, route: &Route, msg: &async_nats::Message) -> Result<(Box<RawValue>, Option<After>), ApiError> {
    let spec = &route.spec;
    let max = ctx.estate.config.max_request_bytes;
    if msg.payload.len() > max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("request is {} bytes; the limit is {max}", msg.payload.len()),
        ));
    }
    let now = ctx.estate.clock().now_unix();
    let claims = proto::verify_request::<Box<RawValue>>(&msg.payload, spec.subject, spec.kind, ctx.estate.trust_domain(), now)?;
    let info = origin::request_info(msg)?;
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
    // A changing request's reply is kept: the same request again (a client retrying after a
    // lost reply) gets it instead of a second effect.
    let kept = proto::changes(spec.subject).then(|| (replies::key(&claims.iss, &claims.jti), replies::digest(&msg.payload)));
    let first_time = || async {
        if let Some((k, d)) = &kept {
            if let Some(v) = replies::lookup(ctx, k, d) {
                return Err(Ok(v));
            }
        }
        match check_replay() {
            Ok(()) => Ok(()),
            // The same request while its first attempt is still being served here (the client
            // gave up waiting and sent it again): wait for the first attempt's reply.
            Err(e) if e.code == ErrorCode::Replayed => match &kept {
                Some((k, d)) if ctx.replies.is_serving(k) => Err(replies::wait(ctx, k, d).await.ok_or(e)),
                _ => Err(Err(e)),
            },
            Err(e) => Err(Err(e)),
        }
    };
    let mut call = Call { signer: claims.iss.clone(), caller: None, info, after: None, access: None, reach: None };
    if spec.caller == Caller::Enrollee {
        if call.info.as_ref().map(|i| i.acc.as_str()) != Some(ctx.bootstrap_account.as_str()) {
            return Err(ApiError::unauthenticated("enrollment must come from a join token's bootstrap connection"));
        }
        if let Err(answer) = first_time().await {
            return answer.map(|v| (v, None));
        }
        let _serving = kept.as_ref().map(|(k, _)| ctx.replies.serving(k));
        return match run_raced(ctx, route, &mut call, &claims.body).await {
            Ok(v) => {
                if let Some((k, d)) = kept {
                    replies::keep(ctx, k, d, claims.exp, &v);
                }
                Ok((v, call.after))
            }
            Err(e) => {
                audit_refusal(ctx, &format!("nkey:{}", claims.iss), spec, &e);
                Err(e)
            }
        };
    }
    let caller = ctx
        .estate
        .identity(&claims.iss)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::unauthenticated("the signing key belongs to no identity of this control plane"))?;
    if let Err(answer) = first_time().await {
        return answer.map(|v| (v, None));
    }
    if let Err(e) = crate::policy::check_caller(caller.facts(), spec, now).and_then(|_| origin::check_request_origin(ctx, &caller, call.info.as_ref())) {
        audit_refusal(ctx, &caller.id, spec, &e);
        return Err(e);
    }
    if spec.caller == Caller::Admin {
        call.access = Some(caller.access());
    }
    let actor = caller.id.clone();
    call.caller = Some(caller);
    let _serving = kept.as_ref().map(|(k, _)| ctx.replies.serving(k));
    let value = match run_raced(ctx, route, &mut call, &claims.body).await {
        Ok(v) => v,
        Err(e) => {
            let tenant = match &call.reach {
                Some(proto::Reach::Tenant(t)) => Some(t.as_str()),
                _ => None,
            };
            audit_refusal_in(ctx, &actor, spec, &e, tenant);
            return Err(e);
        }
    };
    if let Some((k, d)) = kept {
        replies::keep(ctx, k, d, claims.exp, &value);
    }
    // Every admin call is in the audit log: changes record themselves with what they changed;
    // reads are recorded here (who read what), without holding up the reply.
    if spec.caller == Caller::Admin && !proto::changes(spec.subject) {
        ctx.journal.record_relaxed(crate::audit::Entry::ok(&actor, verb(spec.subject), spec.subject));
    }
    Ok((value, call.after))
}

/// How often a request whose change raced another replica's is served again.
const RACE_RETRIES: u32 = 8;

/// Serve the verb; when another replica changed the estate first ([`super::RACED`]), serve it
/// again from the fresh state, a few times, after a short random pause.
///
/// A store that is away for a moment (a clustered JetStream electing a stream leader after a
/// node died) is waited for up to [`STORE_AWAY_WAIT`]: nothing was changed by the failed try.
async fn run_raced(ctx: &Arc<Ctx>, route: &Route, call: &mut Call, body: &RawValue) -> Result<Box<RawValue>, ApiError> {
    let mut attempt = 0;
    let deadline = tokio::time::Instant::now() + STORE_AWAY_WAIT;
    loop {
        call.after = None;
        match (route.run)(ctx, call, body).await {
            Err(e) if e.code == ErrorCode::Unavailable && e.message == super::RACED && attempt < RACE_RETRIES => {
                attempt += 1;
                ctx.metrics.raced.inc();
                let pause = 1 + (uuid::Uuid::new_v4().as_u128() % (5 * attempt as u128)) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(e) if e.code == ErrorCode::Unavailable && e.message == super::STORE_AWAY && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            r => return r,
        }
    }
}

/// How long a request waits for a store that is away (a stream leader election takes 4 to 9 s).
const STORE_AWAY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The verb of a subject, as the audit log names it: `status`, `token.create`, `enroll`, `renew`.
pub(crate) fn verb(subject: &str) -> &str {
    let s = subject.strip_prefix("tillit.v1.").unwrap_or(subject);
    s.strip_prefix("admin.").or_else(|| s.strip_prefix("svc.")).unwrap_or(s)
}

/// Record a refusal that matters (who was denied what), without holding up the reply.
fn audit_refusal(ctx: &Ctx, actor: &str, spec: &EndpointSpec, e: &ApiError) {
    audit_refusal_in(ctx, actor, spec, e, None)
}

/// [`audit_refusal`] of a request that reached one tenant's things: the record names the tenant
/// (`detail.tenant`), so that tenant's confined auditors see it.
fn audit_refusal_in(ctx: &Ctx, actor: &str, spec: &EndpointSpec, e: &ApiError, tenant: Option<&str>) {
    let worth_recording = matches!(
        e.code,
        ErrorCode::Forbidden | ErrorCode::TokenUsed | ErrorCode::TokenExpired | ErrorCode::TokenInvalid | ErrorCode::Unauthenticated
    );
    if !worth_recording {
        return;
    }
    ctx.journal.record_relaxed(
        crate::audit::Entry::denied(actor, verb(spec.subject), spec.subject, e.code.as_str()).detail(match tenant {
            Some(t) => serde_json::json!({ "message": e.message, "tenant": t }),
            None => serde_json::json!({ "message": e.message }),
        }),
    );
}

/// The request body, parsed once into its type (the envelope keeps it raw).
pub(super) fn body<T: DeserializeOwned>(v: &RawValue) -> Result<T, ApiError> {
    serde_json::from_str(v.get()).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// A reply, encoded once.
pub(super) fn to_value<T: serde::Serialize>(t: T) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(&t).map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_has_a_route() {
        let r = routes();
        assert_eq!(r.len(), proto::ENDPOINTS.len());
        for (route, spec) in r.iter().zip(proto::ENDPOINTS) {
            assert_eq!(route.spec.subject, spec.subject);
        }
    }

    #[test]
    fn verbs_match_the_cli_words() {
        assert_eq!(verb("tillit.v1.admin.status"), "status");
        assert_eq!(verb("tillit.v1.admin.token.create"), "token.create");
        assert_eq!(verb("tillit.v1.enroll"), "enroll");
        assert_eq!(verb("tillit.v1.svc.renew"), "renew");
    }
}
