//! Committed writes as the journal's observers see them (the OCSP publisher, the caller-key
//! publisher, the CRL cache): the few fields of an identity record they read are parsed once
//! for all of them, not once each (every renewal and enrollment writes an identity).

use crate::estate::IdentityState;
use crate::identity::IdentityKind;
use crate::names::ServiceId;
use crate::store::{Op, Space};

/// What the observers read of a written identity record.
#[derive(Debug, serde::Deserialize)]
pub struct IdentityFacts {
    pub state: Option<IdentityState>,
    pub kind: Option<IdentityKind>,
    pub service: Option<ServiceId>,
}

/// One committed write, with its identity's facts when it wrote an identity record that reads.
#[derive(Debug)]
pub struct Observed<'a> {
    pub op: &'a Op,
    /// `None`: not an identity write, a deletion, or a record that does not read.
    pub identity: Option<IdentityFacts>,
}

impl<'a> Observed<'a> {
    /// `op` as the observers see it.
    pub fn of(op: &'a Op) -> Self {
        let identity = match (op.space, op.value.as_deref()) {
            (Space::Identities, Some(v)) => serde_json::from_slice(v).ok(),
            _ => None,
        };
        Observed { op, identity }
    }

    /// Whether it wrote an identity record that reads as revoked.
    pub fn revokes_identity(&self) -> bool {
        self.identity.as_ref().is_some_and(|i| i.state == Some(IdentityState::Revoked))
    }
}

/// Every write of `ops`, as the observers see it.
pub fn all(ops: &[Op]) -> Vec<Observed<'_>> {
    ops.iter().map(Observed::of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estate::IdentityRecord;

    /// A written identity record is read once into what the observers need; other writes,
    /// deletions and records that do not read carry no facts.
    #[test]
    fn an_identity_write_is_read_once_into_its_facts() {
        let mut rec = IdentityRecord::admin("x", "x", &nkeys::KeyPair::new_user().public_key(), "", 0, 1_790_000_000);
        rec.kind = IdentityKind::Service;
        rec.service = Some(ServiceId::parse("acme/shop/prod/orders").unwrap());
        let write = |space, value: Option<Vec<u8>>| Op { space, key: rec.user_public_key.clone(), value, expect: None };
        let op = write(Space::Identities, Some(serde_json::to_vec(&rec).unwrap()));
        let seen = Observed::of(&op);
        let facts = seen.identity.as_ref().expect("facts");
        assert_eq!((facts.state, facts.kind, facts.service.as_ref()), (Some(IdentityState::Active), Some(IdentityKind::Service), rec.service.as_ref()));
        assert!(!seen.revokes_identity());
        rec.state = IdentityState::Revoked;
        let op = write(Space::Identities, Some(serde_json::to_vec(&rec).unwrap()));
        assert!(Observed::of(&op).revokes_identity());
        for op in [write(Space::Identities, None), write(Space::Identities, Some(b"{not json".to_vec())), write(Space::Serials, Some(serde_json::to_vec(&rec).unwrap()))] {
            let seen = Observed::of(&op);
            assert!(seen.identity.is_none() && !seen.revokes_identity(), "{op:?}");
        }
    }
}
