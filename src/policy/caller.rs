//! Whether an identity may call an endpoint now (pure, table-tested): revoked and expired
//! identities may call nothing; admin verbs are for admin identities.

use crate::error::{ApiError, ErrorCode};
use crate::identity::IdentityKind;
use crate::proto::{Caller, EndpointSpec};

/// What the policy needs to know of a caller (from its identity record).
#[derive(Debug, Clone, Copy)]
pub struct CallerFacts {
    /// What kind of identity it is.
    pub kind: IdentityKind,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When its credentials expire (Unix seconds).
    pub expires_at: i64,
}

/// Whether a caller with `facts` may call `spec` at `now`.
pub(crate) fn check_caller(facts: CallerFacts, spec: &EndpointSpec, now: i64) -> Result<(), ApiError> {
    if facts.revoked {
        return Err(ApiError::forbidden("this identity is revoked; enroll again with a new join token"));
    }
    if facts.expires_at <= now {
        return Err(ApiError::new(ErrorCode::Expired, "this identity has expired; enroll again with a new join token"));
    }
    if spec.caller == Caller::Admin && facts.kind != IdentityKind::Admin {
        return Err(ApiError::forbidden(format!("{} is for admin identities only", spec.subject)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Endpoint;

    fn facts(kind: IdentityKind, revoked: bool, expires_at: i64) -> CallerFacts {
        CallerFacts { kind, revoked, expires_at }
    }

    #[test]
    fn caller_policy_table() {
        let admin_ep = <crate::proto::Status as Endpoint>::SPEC;
        let svc_ep = <crate::proto::Renew as Endpoint>::SPEC;
        let cases = [
            (facts(IdentityKind::Admin, false, 100), admin_ep, None),
            (facts(IdentityKind::Service, false, 100), admin_ep, Some(ErrorCode::Forbidden)),
            (facts(IdentityKind::Agent, false, 100), admin_ep, Some(ErrorCode::Forbidden)),
            (facts(IdentityKind::Service, false, 100), svc_ep, None),
            (facts(IdentityKind::Admin, true, 100), admin_ep, Some(ErrorCode::Forbidden)),
            (facts(IdentityKind::Service, false, 50), svc_ep, Some(ErrorCode::Expired)),
            (facts(IdentityKind::Service, true, 50), svc_ep, Some(ErrorCode::Forbidden)),
        ];
        for (f, ep, want) in cases {
            let got = check_caller(f, &ep, 50).err().map(|e| e.code);
            assert_eq!(got, want, "{f:?} on {}", ep.subject);
        }
    }
}
