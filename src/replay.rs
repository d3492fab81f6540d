//! A bounded replay cache: each request or envelope id is accepted once while it is valid.
//!
//! Entries expire with the message they stand for, so the cache holds at most the ids seen in one
//! validity window. When full of unexpired ids it refuses new ones (fail closed) rather than
//! forgetting one that could then be replayed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Outcome of [`ReplayCache::check_and_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First sighting; recorded.
    New,
    /// Already seen: a replay.
    Replay,
    /// Cache full of live ids: refuse, try again later.
    Full,
    /// This signer holds its share of the cache already ([`ReplayCache::signer_quota`]): one
    /// identity cannot fill the cache and lock everyone else out.
    SignerQuota,
}

/// Each id is held once and shared by both indexes, and each signer's name once for all its ids
/// (5,000 site agents acknowledging five rotations left 75,000 live ids: each copy counted).
#[derive(Debug, Default)]
struct Inner {
    /// id → (expiry, signer).
    ids: HashMap<Arc<str>, (i64, Arc<str>)>,
    by_exp: BTreeMap<i64, Vec<Arc<str>>>,
    /// Live ids per signer.
    per_signer: HashMap<Arc<str>, usize>,
}

impl Inner {
    fn insert(&mut self, id: &str, exp: i64, signer: &str) {
        let signer: Arc<str> = match self.per_signer.get_key_value(signer) {
            Some((k, _)) => k.clone(),
            None => Arc::from(signer),
        };
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(id.clone(), (exp, signer.clone()));
        self.by_exp.entry(exp).or_default().push(id);
        *self.per_signer.entry(signer).or_default() += 1;
    }
}

/// Thread-safe replay cache with a capacity.
#[derive(Debug)]
pub struct ReplayCache {
    cap: usize,
    inner: Mutex<Inner>,
    /// Ids issued before this are refused: a previous run may have seen them and its cache
    /// was not handed over (a crash). 0: no such bound.
    not_before: std::sync::atomic::AtomicI64,
}

/// A saved cache: the live ids and their expiry, MACed so that a data dir edited without the
/// master key cannot drop an id from it (a dropped id could be replayed).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub saved_at: i64,
    pub ids: Vec<(String, i64)>,
    pub mac: String,
}

fn snapshot_body(saved_at: i64, ids: &[(String, i64)]) -> Vec<u8> {
    serde_json::to_vec(&(saved_at, ids)).unwrap_or_default()
}

impl ReplayCache {
    pub fn new(cap: usize) -> Self {
        ReplayCache { cap: cap.max(1), inner: Mutex::new(Inner::default()), not_before: Default::default() }
    }

    /// Refuse ids issued before `t` ([`Seen::Replay`]): used when a previous run's cache is
    /// unknown.
    pub fn set_not_before(&self, t: i64) {
        self.not_before.store(t, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether an id issued at `iat` may be new at all.
    pub fn issued_in_time(&self, iat: i64) -> bool {
        iat >= self.not_before.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The live ids, MACed under `key`.
    pub fn snapshot(&self, key: &crate::crypto::MacKey, now: i64) -> Snapshot {
        let ids: Vec<(String, i64)> = match self.inner.lock() {
            Ok(g) => g.ids.iter().filter(|(_, (e, _))| *e > now).map(|(i, (e, _))| (i.to_string(), *e)).collect(),
            Err(p) => p.into_inner().ids.iter().filter(|(_, (e, _))| *e > now).map(|(i, (e, _))| (i.to_string(), *e)).collect(),
        };
        let mac = key.mac_hex(&snapshot_body(now, &ids));
        Snapshot { saved_at: now, ids, mac }
    }

    /// Take a previous run's ids back; false (and nothing taken) if the MAC does not verify.
    pub fn restore(&self, snap: &Snapshot, key: &crate::crypto::MacKey, now: i64) -> bool {
        if !key.verify_hex(&snapshot_body(snap.saved_at, &snap.ids), &snap.mac) {
            return false;
        }
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for (id, exp) in &snap.ids {
            if *exp > now && g.ids.len() < self.cap && !g.ids.contains_key(id.as_str()) {
                g.insert(id, *exp, "");
            }
        }
        true
    }

    /// Most live ids one signer may hold: a quarter of the cache.
    pub fn signer_quota(&self) -> usize {
        (self.cap / 4).max(1)
    }

    /// Record `id`, valid until `exp`, at time `now` (no signer: enveloped ids).
    pub fn check_and_insert(&self, id: &str, exp: i64, now: i64) -> Seen {
        self.check_and_insert_by(id, "", exp, now)
    }

    /// Record `id` of `signer`, valid until `exp`, at time `now`.
    pub fn check_and_insert_by(&self, id: &str, signer: &str, exp: i64, now: i64) -> Seen {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Drop expired ids.
        let live = g.by_exp.split_off(&(now + 1));
        let expired = std::mem::replace(&mut g.by_exp, live);
        for (_, ids) in expired {
            for i in ids {
                if let Some((_, s)) = g.ids.remove(&i) {
                    if let Some(n) = g.per_signer.get_mut(&s) {
                        *n -= 1;
                        if *n == 0 {
                            g.per_signer.remove(&s);
                        }
                    }
                }
            }
        }
        if g.ids.contains_key(id) {
            return Seen::Replay;
        }
        if g.ids.len() >= self.cap {
            return Seen::Full;
        }
        if !signer.is_empty() && g.per_signer.get(signer).copied().unwrap_or(0) >= self.signer_quota() {
            return Seen::SignerQuota;
        }
        g.insert(id, exp, signer);
        Seen::New
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.ids.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_window_and_bounded() {
        let c = ReplayCache::new(2);
        assert_eq!(c.check_and_insert("a", 100, 0), Seen::New);
        assert_eq!(c.check_and_insert("a", 100, 50), Seen::Replay);
        assert_eq!(c.check_and_insert("b", 200, 50), Seen::New);
        assert_eq!(c.check_and_insert("c", 200, 50), Seen::Full);
        // "a" expires at 100: room again, and "a" is forgotten only after its own expiry.
        assert_eq!(c.check_and_insert("c", 200, 100), Seen::New);
        assert_eq!(c.len(), 2);
        assert_eq!(c.check_and_insert("b", 200, 150), Seen::Replay);
    }

    /// An id is held once for both indexes, a signer's name once for all its ids; expiry lets
    /// go of both.
    #[test]
    fn ids_and_signers_are_held_once() {
        let c = ReplayCache::new(100);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(c.check_and_insert_by(id, "UAGENT", 10 + i as i64, 0), Seen::New);
        }
        {
            let g = c.inner.lock().unwrap();
            let (signer, n) = g.per_signer.get_key_value("UAGENT").unwrap();
            assert_eq!(*n, 3);
            assert_eq!(Arc::strong_count(signer), 4, "the per-signer key and one share per id");
            let (id, _) = g.ids.get_key_value("a").unwrap();
            assert_eq!(Arc::strong_count(id), 2, "the id map and the expiry index share it");
        }
        assert_eq!(c.check_and_insert_by("d", "UOTHER", 100, 50), Seen::New);
        let g = c.inner.lock().unwrap();
        assert!(!g.per_signer.contains_key("UAGENT") && g.ids.len() == 1, "expired ids and their signer are gone");
    }

    #[test]
    fn one_signer_cannot_fill_the_cache() {
        let c = ReplayCache::new(8);
        assert_eq!(c.signer_quota(), 2);
        assert_eq!(c.check_and_insert_by("a1", "UA", 100, 0), Seen::New);
        assert_eq!(c.check_and_insert_by("a2", "UA", 100, 0), Seen::New);
        assert_eq!(c.check_and_insert_by("a3", "UA", 100, 0), Seen::SignerQuota);
        assert_eq!(c.check_and_insert_by("b1", "UB", 100, 0), Seen::New, "others are not held up");
        // Its ids expire: its share is back.
        assert_eq!(c.check_and_insert_by("a3", "UA", 200, 100), Seen::New);
        assert_eq!(c.check_and_insert_by("a1", "UA", 200, 100), Seen::New, "an expired id is forgotten");
    }

    #[test]
    fn a_snapshot_carries_the_live_ids_to_the_next_run_and_is_authenticated() {
        let key = crate::crypto::MasterKey::generate().unwrap().derive("replay");
        let c = ReplayCache::new(10);
        c.check_and_insert("a", 100, 0);
        c.check_and_insert("b", 50, 0);
        let snap = c.snapshot(&key, 60);
        assert_eq!(snap.ids, vec![("a".to_string(), 100)], "expired ids are not carried");
        let next = ReplayCache::new(10);
        assert!(next.restore(&snap, &key, 61));
        assert_eq!(next.check_and_insert("a", 100, 62), Seen::Replay);
        // An id taken out of the file: the MAC no longer verifies, nothing is restored.
        let mut edited = snap.clone();
        edited.ids.clear();
        let other = ReplayCache::new(10);
        assert!(!other.restore(&edited, &key, 61));
        // Without a trustworthy snapshot, ids issued before the start are refused.
        other.set_not_before(61);
        assert!(!other.issued_in_time(60));
        assert!(other.issued_in_time(61));
    }
}
