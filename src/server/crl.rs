//! The CRLs `/crl` serves, built once per change of what they list.
//!
//! Building one walks every serial of the estate (5.5 s at 100,000 services), and anyone who
//! reaches the HTTP port may ask for it: each CA's CRL is kept, and built again only when a
//! write that can revoke a certificate was committed (an identity revoked, a join token used,
//! a serial marked revoked: a site's certificate replaced or its site removed), when another
//! replica changed the store, or once it
//! is [`REBUILD_AFTER_SECS`] old (revoked certificates that expired since leave it). One build
//! runs at a time; requests that arrive meanwhile wait for it and share it.

use super::observed::Observed;
use crate::store::{Op, Space};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A kept CRL is built again once this old, whatever changed: its `thisUpdate` stays recent
/// (its `nextUpdate` is [`crate::ocsp::NEXT_UPDATE_SECS`] later; caches are told half that).
pub const REBUILD_AFTER_SECS: i64 = 60;

/// Each CA's CRL as last built.
#[derive(Debug, Default)]
pub struct CrlCache {
    /// Bumped by every committed write that can change what a CRL lists.
    changes: AtomicU64,
    built: Mutex<HashMap<String, Built>>,
    /// One build at a time.
    building: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Built {
    der: Arc<Vec<u8>>,
    /// [`CrlCache::changes`] plus the store's changes from other replicas, when it was built.
    generation: u64,
    at: i64,
}

/// Which committed writes the journal should tell the cache of (a cheap first filter).
pub fn watched(op: &Op) -> bool {
    matches!(op.space, Space::Identities | Space::Tokens | Space::Serials)
}

/// Whether a committed write can change what a CRL lists: an identity revoked, a join token
/// used (its bootstrap certificate is superseded), a serial marked revoked (what
/// [`crate::estate::Estate::revoked_serials`] reads). Issuing a certificate or renewing one
/// cannot. A deletion, or a record that does not read, counts as revoking.
pub fn revokes(w: &Observed) -> bool {
    // Only the one field a serial needs is read (every renewal writes a serial); an identity's
    // facts were read once for every observer.
    #[derive(serde::Deserialize)]
    struct Serial {
        revoked_at: Option<i64>,
    }
    let Some(v) = w.op.value.as_deref() else { return watched(w.op) };
    match w.op.space {
        Space::Tokens => true,
        Space::Identities => w.identity.is_none() || w.revokes_identity(),
        Space::Serials => serde_json::from_slice::<Serial>(v).map_or(true, |s| s.revoked_at.is_some()),
        _ => false,
    }
}

impl CrlCache {
    /// Committed writes that passed [`watched`]: any that [`revokes`] makes every kept CRL stale.
    pub fn told(&self, seen: &[Observed]) {
        if seen.iter().any(revokes) {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn generation(&self, others: u64) -> u64 {
        self.changes.load(Ordering::Relaxed).wrapping_add(others)
    }

    fn fresh(&self, ca: &str, generation: u64, now: i64) -> Option<Arc<Vec<u8>>> {
        let built = self.built.lock().ok()?;
        built.get(ca).filter(|b| b.generation == generation && now - b.at < REBUILD_AFTER_SECS && b.at <= now).map(|b| b.der.clone())
    }

    /// The CRL of CA `ca` (its id): kept, or built by `build` (on a blocking thread) when what
    /// it lists may have changed. `others`: the store's count of other replicas' changes.
    pub async fn get(
        &self,
        ca: &str,
        others: impl Fn() -> u64,
        now: impl Fn() -> i64,
        build: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
    ) -> Result<Arc<Vec<u8>>, String> {
        if let Some(der) = self.fresh(ca, self.generation(others()), now()) {
            return Ok(der);
        }
        let _one = self.building.lock().await;
        // Read before the build: a change committed while it runs makes the next request build again.
        let generation = self.generation(others());
        let at = now();
        if let Some(der) = self.fresh(ca, generation, at) {
            return Ok(der);
        }
        let der = Arc::new(tokio::task::spawn_blocking(build).await.map_err(|e| e.to_string())??);
        if let Ok(mut built) = self.built.lock() {
            built.insert(ca.to_string(), Built { der: der.clone(), generation, at });
        }
        Ok(der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(space: Space, value: Option<serde_json::Value>) -> Op {
        Op { space, key: "k".into(), value: value.map(|v| serde_json::to_vec(&v).unwrap()), expect: None }
    }

    #[test]
    fn only_writes_that_can_revoke_make_a_crl_stale() {
        let revokes = |op: Op| revokes(&Observed::of(&op));
        assert!(revokes(op(Space::Identities, Some(serde_json::json!({"state": "revoked"})))));
        assert!(!revokes(op(Space::Identities, Some(serde_json::json!({"state": "active"})))), "a renewal");
        assert!(revokes(op(Space::Serials, Some(serde_json::json!({"revoked_at": 5})))));
        assert!(!revokes(op(Space::Serials, Some(serde_json::json!({"not_after": 5})))), "an issued certificate");
        assert!(revokes(op(Space::Tokens, Some(serde_json::json!({"state": "used"})))));
        assert!(!revokes(op(Space::Sites, Some(serde_json::json!({"site": "a"})))), "an agent's status");
        assert!(revokes(op(Space::Identities, None)), "a deletion, to be safe");
        assert!(revokes(op(Space::Identities, Some(serde_json::json!({"state": "no such state"})))), "a record that does not read, to be safe");
        assert!(!revokes(op(Space::Roles, None)));
    }

    #[tokio::test]
    async fn a_kept_crl_is_served_until_a_revoking_write_another_replica_or_its_age() {
        let cache = CrlCache::default();
        let builds = Arc::new(AtomicU64::new(0));
        let others = Arc::new(AtomicU64::new(0));
        let get = |now: i64| {
            let (builds, others) = (builds.clone(), others.clone());
            let cache = &cache;
            async move {
                let n = builds.clone();
                cache
                    .get("ca", move || others.load(Ordering::Relaxed), move || now, move || Ok(vec![n.fetch_add(1, Ordering::Relaxed) as u8]))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(*get(100).await, vec![0]);
        assert_eq!(*get(101).await, vec![0], "kept");
        cache.told(&[Observed::of(&op(Space::Identities, Some(serde_json::json!({"state": "active"}))))]);
        assert_eq!(*get(102).await, vec![0], "a renewal changes nothing");
        cache.told(&[Observed::of(&op(Space::Identities, Some(serde_json::json!({"state": "revoked"}))))]);
        assert_eq!(*get(103).await, vec![1], "a revocation builds it again");
        others.fetch_add(1, Ordering::Relaxed);
        assert_eq!(*get(104).await, vec![2], "so does another replica's change");
        assert_eq!(*get(104 + REBUILD_AFTER_SECS - 1).await, vec![2]);
        assert_eq!(*get(104 + REBUILD_AFTER_SECS).await, vec![3], "and its age");
        assert_eq!(builds.load(Ordering::Relaxed), 4);
    }
}
