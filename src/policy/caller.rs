//! Whether an identity may call an endpoint now (pure, table-tested): revoked and expired
//! identities may call nothing; admin verbs are for admin identities.

use crate::error::{ApiError, ErrorCode};
use crate::estate::{IdentityRecord, IdentityState};
use crate::identity::IdentityKind;
use crate::proto::{Caller, EndpointSpec};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Endpoint;

    fn rec(kind: IdentityKind, state: IdentityState, expires_at: i64) -> IdentityRecord {
        IdentityRecord { kind, state, ..IdentityRecord::admin("spiffe://td/x", "x", "U", "01", 0, expires_at) }
    }

    #[test]
    fn caller_policy_table() {
        let admin_ep = <crate::proto::Status as Endpoint>::SPEC;
        let svc_ep = <crate::proto::Renew as Endpoint>::SPEC;
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
