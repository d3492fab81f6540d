//! The leader lease of a replicated control plane (pure, table-tested): which replica runs the
//! singleton jobs, for how long, and with which fencing token.
//!
//! The lease is one record, replaced only by compare-and-set: a replica that holds it renews it
//! at a third of its life; a replica that finds it expired takes it over with the next fencing
//! token. A token only ever grows, so a deposed leader's writes can be told from the new one's.

use serde::{Deserialize, Serialize};

/// The lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The replica holding it.
    pub holder: String,
    /// The fencing token: one more at every change of holder.
    pub token: u64,
    /// Until when it holds (Unix milliseconds).
    pub expires_at_ms: i64,
}

/// What a replica does about the lease at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this lease (compare-and-set over what was read): take it over, or renew it.
    Write(Lease),
    /// Another replica holds it: follow until it expires (Unix milliseconds).
    Follow { holder: String, until_ms: i64 },
    /// Ours, and not due for renewal yet.
    Hold,
}

/// What replica `me` does at `now_ms` about `current` (`None`: no lease yet), with leases of
/// `ttl_ms`: renew its own once a third of the life is gone (so two renewals can fail before it
/// lapses), take over an expired or missing one with the next token, else follow.
pub fn step(current: Option<&Lease>, me: &str, now_ms: i64, ttl_ms: i64) -> Step {
    let fresh = |token| Step::Write(Lease { holder: me.to_string(), token, expires_at_ms: now_ms + ttl_ms });
    match current {
        None => fresh(1),
        Some(l) if l.holder == me && l.expires_at_ms > now_ms => {
            if now_ms >= l.expires_at_ms - ttl_ms * 2 / 3 {
                Step::Write(Lease { expires_at_ms: now_ms + ttl_ms, ..l.clone() })
            } else {
                Step::Hold
            }
        }
        Some(l) if l.expires_at_ms <= now_ms => fresh(l.token + 1),
        Some(l) => Step::Follow { holder: l.holder.clone(), until_ms: l.expires_at_ms },
    }
}

/// Whether `lease` lets `me` act with `token` at `now_ms` (a fenced write checks this against the
/// lease as stored).
pub fn may_act(lease: Option<&Lease>, me: &str, token: u64, now_ms: i64) -> bool {
    lease.is_some_and(|l| l.holder == me && l.token == token && l.expires_at_ms > now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, token: u64, expires_at_ms: i64) -> Lease {
        Lease { holder: holder.into(), token, expires_at_ms }
    }

    #[test]
    fn lease_table() {
        const TTL: i64 = 3_000;
        let cases: Vec<(&str, Option<Lease>, &str, i64, Step)> = vec![
            ("nobody holds it: take token 1", None, "a", 1_000, Step::Write(lease("a", 1, 4_000))),
            ("ours, fresh: hold", Some(lease("a", 1, 4_000)), "a", 1_500, Step::Hold),
            ("ours, a third gone: renew, same token", Some(lease("a", 1, 4_000)), "a", 2_000, Step::Write(lease("a", 1, 5_000))),
            ("another's, live: follow", Some(lease("a", 1, 4_000)), "b", 3_999, Step::Follow { holder: "a".into(), until_ms: 4_000 }),
            ("another's, expired: take over, next token", Some(lease("a", 7, 4_000)), "b", 4_000, Step::Write(lease("b", 8, 7_000))),
            ("ours but expired (we stalled): a new token", Some(lease("a", 7, 4_000)), "a", 4_500, Step::Write(lease("a", 8, 7_500))),
        ];
        for (why, current, me, now, want) in cases {
            assert_eq!(step(current.as_ref(), me, now, TTL), want, "{why}");
        }
    }

    #[test]
    fn only_the_live_holder_with_its_token_may_act() {
        let l = lease("a", 3, 4_000);
        assert!(may_act(Some(&l), "a", 3, 3_999));
        assert!(!may_act(Some(&l), "a", 3, 4_000), "expired");
        assert!(!may_act(Some(&l), "a", 2, 1_000), "a deposed token");
        assert!(!may_act(Some(&l), "b", 3, 1_000), "another replica");
        assert!(!may_act(None, "a", 3, 1_000));
    }
}
