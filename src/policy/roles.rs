//! Admin roles (pure, table-tested): which role may call which admin verb, and how far an admin
//! confined to tenants reaches.
//!
//! The matrix is [`MATRIX`], one row per admin verb; a verb without a row is refused to every
//! role (and a unit test fails). Confinement reads what the request reaches
//! ([`Reach`], said by every request type below): an admin confined to tenants may act on those
//! tenants' things, sees only them in listings, reads estate-wide facts that belong to no
//! tenant, and makes no estate-wide change. Owners are never confined.

use crate::error::ApiError;
use crate::names::ServiceId;
use crate::proto::{self, AdminRole, Reach, Reaches};

/// An admin's powers: its role, and the tenants it is confined to (empty: the whole estate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub role: AdminRole,
    pub tenants: Vec<String>,
}

impl Access {
    /// An owner's access (the whole estate, every verb).
    pub fn owner() -> Self {
        Access { role: AdminRole::Owner, tenants: vec![] }
    }

    /// Whether the admin is confined to some tenants.
    pub fn confined(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// Whether the admin sees tenant `t`'s things.
    pub fn sees(&self, t: &str) -> bool {
        !self.confined() || self.tenants.iter().any(|x| x == t)
    }
}

use AdminRole::{Auditor as A, Operator as P, Owner as O};

/// The verb × role matrix: who may call each admin verb. The README's role table is this one.
pub const MATRIX: &[(&str, &[AdminRole])] = &[
    (proto::Status::SUBJECT, &[O, P, A]),
    (proto::List::SUBJECT, &[O, P, A]),
    (proto::Grants::SUBJECT, &[O, P, A]),
    (proto::SecretList::SUBJECT, &[O, P, A]),
    (proto::SecretVersions::SUBJECT, &[O, P, A]),
    (proto::SiteList::SUBJECT, &[O, P, A]),
    (proto::TokenCreate::SUBJECT, &[O, P]),
    (proto::Grant::SUBJECT, &[O, P]),
    (proto::Ungrant::SUBJECT, &[O, P]),
    (proto::Revoke::SUBJECT, &[O, P]),
    (proto::SecretPut::SUBJECT, &[O, P]),
    (proto::SecretRotate::SUBJECT, &[O, P]),
    (proto::SecretDelete::SUBJECT, &[O, P]),
    (proto::SiteAdd::SUBJECT, &[O, P]),
    (proto::SiteRemove::SUBJECT, &[O, P]),
    (proto::RotateSigningKey::SUBJECT, &[O, P]),
    (proto::RotateCa::SUBJECT, &[O, P]),
    (proto::AuditTail::SUBJECT, &[O, A]),
    (proto::AuditVerify::SUBJECT, &[O, A]),
    (proto::AdminList::SUBJECT, &[O, A]),
    (proto::AdminAdd::SUBJECT, &[O]),
    (proto::EstateExport::SUBJECT, &[O, P, A]),
    (proto::DashboardSession::SUBJECT, &[O, P, A]),
    (proto::SecretReaders::SUBJECT, &[O, P]),
];

/// The roles that may call the admin verb on `subject` (none for an unknown verb).
pub fn roles_for(subject: &str) -> &'static [AdminRole] {
    MATRIX.iter().find(|(s, _)| *s == subject).map(|(_, r)| *r).unwrap_or(&[])
}

fn names(roles: &[AdminRole]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}

/// Whether `access` may call the admin verb on `subject` with a request that reaches `reach`.
pub fn authorize(access: &Access, subject: &str, reach: &Reach) -> Result<(), ApiError> {
    let allowed = roles_for(subject);
    if !allowed.contains(&access.role) {
        return Err(ApiError::forbidden(format!(
            "{} admins may not call {subject} (it is for: {})",
            access.role,
            if allowed.is_empty() { "nobody".into() } else { names(allowed) }
        )));
    }
    match reach {
        Reach::Admins if access.role != AdminRole::Owner => Err(ApiError::forbidden("only owners manage admin identities")),
        Reach::Tenant(t) if !access.sees(t) => Err(ApiError::forbidden(format!(
            "tenant {t} is outside this admin's tenants ({})",
            access.tenants.join(", ")
        ))),
        Reach::Estate if access.confined() => Err(ApiError::forbidden(format!(
            "{subject} changes the whole estate; this admin is confined to tenants ({})",
            access.tenants.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// What a token or a revocation for `sid` reaches: an admin's identity, a site agent (the
/// estate), or a tenant's service.
fn identity_reach(sid: &ServiceId) -> Reach {
    if crate::names::admin_name(sid).is_some() {
        Reach::Admins
    } else if crate::names::agent_site(sid).is_some() || sid.tenant == crate::names::AGENT_TENANT {
        Reach::Estate
    } else {
        Reach::Tenant(sid.tenant.clone())
    }
}

macro_rules! reach {
    ($($t:ty => |$r:ident| $e:expr),* $(,)?) => {$(
        impl Reaches for $t {
            fn reach(&self) -> Reach {
                let $r = self;
                let _ = &$r;
                $e
            }
        }
    )*};
}

reach! {
    proto::StatusRequest => |r| Reach::EachTenant,
    proto::ListRequest => |r| Reach::EachTenant,
    proto::SecretListRequest => |r| Reach::EachTenant,
    proto::AuditTailRequest => |r| Reach::EachTenant,
    proto::SiteListRequest => |r| Reach::Shared,
    proto::AuditVerifyRequest => |r| Reach::Shared,
    proto::TokenCreateRequest => |r| identity_reach(&r.identity),
    proto::RevokeRequest => |r| identity_reach(&r.service),
    proto::GrantRequest => |r| Reach::Tenant(r.service.tenant.clone()),
    proto::ServiceRequest => |r| Reach::Tenant(r.service.tenant.clone()),
    proto::SecretPutRequest => |r| Reach::Tenant(r.path.tenant.clone()),
    proto::SecretRotateRequest => |r| Reach::Tenant(r.path.tenant.clone()),
    proto::SecretPathRequest => |r| Reach::Tenant(r.path.tenant.clone()),
    proto::SiteAddRequest => |r| Reach::Estate,
    proto::SiteRemoveRequest => |r| Reach::Estate,
    proto::RotateSigningKeyRequest => |r| Reach::Estate,
    proto::RotateCaRequest => |r| Reach::Estate,
    proto::AdminAddRequest => |r| Reach::Admins,
    proto::AdminListRequest => |r| Reach::Estate,
    proto::EstateExportRequest => |r| Reach::EachTenant,
    proto::DashboardSessionRequest => |r| Reach::EachTenant,
    proto::SecretReadersRequest => |r| Reach::Tenant(r.path.tenant.clone()),
    proto::SecretGetRequest => |r| Reach::Own,
    proto::EnrollRequest => |r| Reach::Own,
    proto::RenewRequest => |r| Reach::Own,
    proto::AckRequest => |r| Reach::Own,
    proto::SiteRenewRequest => |r| Reach::Own,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::proto::{Caller, ENDPOINTS};

    #[test]
    fn every_admin_verb_has_one_row_and_only_admin_verbs_have_rows() {
        for e in ENDPOINTS {
            let rows = MATRIX.iter().filter(|(s, _)| *s == e.subject).count();
            assert_eq!(rows, (e.caller == Caller::Admin) as usize, "{}", e.subject);
        }
        assert!(MATRIX.iter().all(|(_, r)| r.contains(&AdminRole::Owner)), "owners may do everything");
    }

    #[test]
    fn confinement_table() {
        let acme_op = Access { role: P, tenants: vec!["acme".into()] };
        let auditor = Access { role: A, tenants: vec![] };
        let owner = Access::owner();
        let cases: Vec<(&Access, &str, Reach, Option<ErrorCode>)> = vec![
            (&acme_op, proto::Grant::SUBJECT, Reach::Tenant("acme".into()), None),
            (&acme_op, proto::Grant::SUBJECT, Reach::Tenant("globex".into()), Some(ErrorCode::Forbidden)),
            (&acme_op, proto::List::SUBJECT, Reach::EachTenant, None),
            (&acme_op, proto::SiteList::SUBJECT, Reach::Shared, None),
            (&acme_op, proto::SiteAdd::SUBJECT, Reach::Estate, Some(ErrorCode::Forbidden)),
            (&acme_op, proto::TokenCreate::SUBJECT, Reach::Admins, Some(ErrorCode::Forbidden)),
            (&acme_op, proto::AuditTail::SUBJECT, Reach::EachTenant, Some(ErrorCode::Forbidden)),
            (&auditor, proto::Grant::SUBJECT, Reach::Tenant("acme".into()), Some(ErrorCode::Forbidden)),
            (&auditor, proto::Grants::SUBJECT, Reach::Tenant("acme".into()), None),
            (&auditor, proto::AuditVerify::SUBJECT, Reach::Shared, None),
            (&auditor, proto::AdminAdd::SUBJECT, Reach::Admins, Some(ErrorCode::Forbidden)),
            (&owner, proto::AdminAdd::SUBJECT, Reach::Admins, None),
            (&owner, proto::RotateCa::SUBJECT, Reach::Estate, None),
            (&owner, "tillit.v1.admin.nonesuch", Reach::Shared, Some(ErrorCode::Forbidden)),
        ];
        for (a, s, r, want) in cases {
            assert_eq!(authorize(a, s, &r).err().map(|e| e.code), want, "{a:?} {s} {r:?}");
        }
    }

    #[test]
    fn tokens_and_revocations_reach_by_identity() {
        let sid = |s: &str| ServiceId::parse(s).unwrap();
        assert_eq!(identity_reach(&sid("acme/shop/prod/orders")), Reach::Tenant("acme".into()));
        assert_eq!(identity_reach(&crate::names::admin_service_id("bob").unwrap()), Reach::Admins);
        assert_eq!(identity_reach(&sid("tillit/sites/edge1/agent")), Reach::Estate);
    }
}
