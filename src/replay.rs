//! A bounded replay cache: each request or envelope id is accepted once while it is valid.
//!
//! Entries expire with the message they stand for, so the cache holds at most the ids seen in one
//! validity window. When full of unexpired ids it refuses new ones (fail closed) rather than
//! forgetting one that could then be replayed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Outcome of [`ReplayCache::check_and_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First sighting; recorded.
    New,
    /// Already seen: a replay.
    Replay,
    /// Cache full of live ids: refuse, try again later.
    Full,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashMap<String, i64>,
    by_exp: BTreeMap<i64, Vec<String>>,
}

/// Thread-safe replay cache with a capacity.
#[derive(Debug)]
pub struct ReplayCache {
    cap: usize,
    inner: Mutex<Inner>,
}

impl ReplayCache {
    pub fn new(cap: usize) -> Self {
        ReplayCache { cap: cap.max(1), inner: Mutex::new(Inner::default()) }
    }

    /// Record `id`, valid until `exp`, at time `now`.
    pub fn check_and_insert(&self, id: &str, exp: i64, now: i64) -> Seen {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Drop expired ids.
        let live = g.by_exp.split_off(&(now + 1));
        let expired = std::mem::replace(&mut g.by_exp, live);
        for (_, ids) in expired {
            for i in ids {
                g.ids.remove(&i);
            }
        }
        if g.ids.contains_key(id) {
            return Seen::Replay;
        }
        if g.ids.len() >= self.cap {
            return Seen::Full;
        }
        g.ids.insert(id.to_string(), exp);
        g.by_exp.entry(exp).or_default().push(id.to_string());
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
}
