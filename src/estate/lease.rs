//! The leader lease in the store: one record in `meta`, replaced only by compare-and-set
//! ([`crate::policy::lease`] decides; this applies the decision). Works on any [`Store`], so
//! replicas sharing a JetStream bucket agree on one leader.

use super::{Estate, Result};
use crate::policy::lease::{self, Lease, Step};
use crate::store::{Space, Store, StoreError};

/// Where the lease lives in [`Space::Meta`].
pub(crate) const LEASE_KEY: &str = "leader_lease";

/// The lease after a replica's step, and whether that replica leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The lease as this replica knows it now (`None`: another replica just wrote one this
    /// replica has not seen yet).
    pub lease: Option<Lease>,
    /// Whether the replica that stepped holds it.
    pub leader: bool,
}

fn read(store: &dyn Store) -> std::result::Result<(Option<Vec<u8>>, Option<Lease>), StoreError> {
    let raw = store.get(Space::Meta, LEASE_KEY)?;
    let lease = match &raw {
        Some(b) => Some(serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(format!("meta/{LEASE_KEY}"), e.to_string()))?),
        None => None,
    };
    Ok((raw, lease))
}

/// One step of replica `me` on the lease at `now_ms` (leases of `ttl_ms`): take it over, renew
/// it, hold it or follow another's; a lost compare-and-set means another replica moved first.
pub fn lease_step(store: &dyn Store, me: &str, now_ms: i64, ttl_ms: i64) -> std::result::Result<LeaseView, StoreError> {
    let (raw, current) = read(store)?;
    match lease::step(current.as_ref(), me, now_ms, ttl_ms) {
        Step::Write(next) => {
            let bytes = serde_json::to_vec(&next).map_err(|e| StoreError::Backend(e.to_string()))?;
            if store.compare_and_swap(Space::Meta, LEASE_KEY, raw.as_deref(), Some(bytes))? {
                return Ok(LeaseView { lease: Some(next), leader: true });
            }
            // Another replica moved first.
            Ok(LeaseView { lease: read(store)?.1, leader: false })
        }
        Step::Hold => Ok(LeaseView { lease: current, leader: true }),
        Step::Follow { .. } => Ok(LeaseView { lease: current, leader: false }),
    }
}

impl LeaseView {
    /// The fencing token, when this replica leads.
    pub fn token(&self) -> Option<u64> {
        self.lease.as_ref().filter(|_| self.leader).map(|l| l.token)
    }
}

/// Whether `me` may act as leader with `token` now (a fenced job checks before each write).
pub fn holds(store: &dyn Store, me: &str, token: u64, now_ms: i64) -> std::result::Result<bool, StoreError> {
    Ok(lease::may_act(read(store)?.1.as_ref(), me, token, now_ms))
}

/// Hand the lease back: `me` holding it with `token` sets its expiry to `now_ms`.
pub fn release(store: &dyn Store, me: &str, token: u64, now_ms: i64) -> std::result::Result<bool, StoreError> {
    let (raw, current) = read(store)?;
    match current {
        Some(l) if l.holder == me && l.token == token && l.expires_at_ms > now_ms => {
            let bytes = serde_json::to_vec(&Lease { expires_at_ms: now_ms, ..l }).map_err(|e| StoreError::Backend(e.to_string()))?;
            store.compare_and_swap(Space::Meta, LEASE_KEY, raw.as_deref(), Some(bytes))
        }
        _ => Ok(false),
    }
}

impl Estate {
    /// [`lease_step`] on this estate's store, at its clock's time.
    pub fn lease_step(&self, me: &str, ttl_ms: i64) -> Result<LeaseView> {
        Ok(lease_step(self.store(), me, self.clock().now_unix() * 1000, ttl_ms)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn two_replicas_on_one_store_have_one_leader_and_a_growing_token() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        const TTL: i64 = 3_000;
        let a = lease_step(&s, "a", 0, TTL).unwrap();
        assert_eq!(a.token(), Some(1));
        let b = lease_step(&s, "b", 500, TTL).unwrap();
        assert!(!b.leader && b.lease.as_ref().unwrap().holder == "a");
        assert!(holds(&s, "a", 1, 500).unwrap() && !holds(&s, "b", 1, 500).unwrap());
        // a renews in time: b keeps following.
        assert!(lease_step(&s, "a", 1_500, TTL).unwrap().leader);
        assert!(!lease_step(&s, "b", 4_000, TTL).unwrap().leader, "renewed until 4,500");
        // a stalls past its lease: b takes over with the next token, and a's token no longer acts.
        let b = lease_step(&s, "b", 4_500, TTL).unwrap();
        assert_eq!(b.token(), Some(2), "{b:?}");
        assert!(!holds(&s, "a", 1, 4_600).unwrap(), "the deposed leader is fenced off");
        let a = lease_step(&s, "a", 4_600, TTL).unwrap();
        assert!(!a.leader && a.lease.unwrap().holder == "b");
    }
}
