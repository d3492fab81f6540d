//! Which replica runs the singleton jobs. On sled there is one `serve`, always the leader; on a
//! JetStream store every replica steps the lease in the store (`estate::lease`) at a third of
//! its life, and only the holder runs the singleton jobs (the `tasks` list). A job checks
//! [`Leadership::fenced`] right before it writes or pushes: the stored lease must still name
//! this replica with its token, and still be valid a margin from now by this machine's clock. A
//! leader that was paused past its lease (SIGSTOP, a long GC-like stall, a VM migration) finds
//! its lease expired when it resumes and acts no more.

use super::Ctx;
use crate::estate::lease::{holds, lease_step};
use crate::policy::lease::Lease;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where replicas announce themselves in `meta` (`replica/<id>`).
const REPLICA_PREFIX: &str = "replica/";

/// A replica as it announces itself (for `status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub id: String,
    pub http_addr: String,
    pub started_at: i64,
    /// Last announcement (Unix milliseconds).
    pub seen_at_ms: i64,
}

/// This replica's view of the lease.
#[derive(Debug)]
pub struct Leadership {
    /// This replica's id.
    pub me: String,
    /// `None`: a single `serve` on sled, always the leader.
    ttl: Option<Duration>,
    leader: AtomicBool,
    token: AtomicU64,
    lease: Mutex<Option<Lease>>,
    /// When this replica started (Unix seconds).
    pub started_at: i64,
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Leadership {
    /// The leadership of a control plane on `store` (`ttl`: the lease's life on a replicated store).
    pub fn new(ttl: Option<Duration>, started_at: i64) -> Self {
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "replica".into());
        let me = std::env::var("TILLIT_REPLICA_ID").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| {
            format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6])
        });
        Leadership { me, ttl, leader: AtomicBool::new(ttl.is_none()), token: AtomicU64::new(0), lease: Mutex::new(None), started_at }
    }

    /// Whether this replica runs the singleton jobs now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Whether the lease is shared by several replicas.
    pub fn replicated(&self) -> bool {
        self.ttl.is_some()
    }

    /// The lease as last seen.
    pub fn lease(&self) -> Option<Lease> {
        self.lease.lock().ok().and_then(|l| l.clone())
    }

    /// Whether this replica may act as the leader right now: the stored lease names it with its
    /// token and stays valid for a sixth of its life more. Check right before a singleton write.
    pub fn fenced(&self, store: &dyn crate::store::Store) -> bool {
        let Some(ttl) = self.ttl else { return true };
        if !self.is_leader() {
            return false;
        }
        let margin = ttl.as_millis() as i64 / 6;
        let ok = holds(store, &self.me, self.token.load(Ordering::SeqCst), now_ms() + margin).unwrap_or(false);
        if !ok {
            self.leader.store(false, Ordering::SeqCst);
        }
        ok
    }
}

/// Step the lease at a third of its life (and announce this replica), until the task stops.
pub(super) async fn run(ctx: Arc<Ctx>) {
    let Some(ttl) = ctx.leader.ttl else { return };
    let every = ttl / 3;
    loop {
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || step(&c, ttl)).await;
        tokio::time::sleep(every).await;
    }
}

/// One lease step now (at start).
pub(super) fn step_now(ctx: &Ctx) {
    if let Some(ttl) = ctx.leader.ttl {
        step(ctx, ttl);
    }
}

fn step(ctx: &Ctx, ttl: Duration) {
    let l = &ctx.leader;
    let store = ctx.estate.store();
    let was = l.is_leader();
    let now = now_ms();
    match lease_step(store, &l.me, now, ttl.as_millis() as i64) {
        Ok(view) => {
            let token = view.token();
            if let Ok(mut slot) = l.lease.lock() {
                *slot = view.lease.clone();
            }
            l.token.store(token.unwrap_or(0), Ordering::SeqCst);
            l.leader.store(view.leader, Ordering::SeqCst);
            if view.leader {
                ctx.metrics.lease_renewals.inc();
            }
            if view.leader != was {
                match view.leader {
                    true => tracing::info!(replica = %l.me, token = ?token, "leader: this replica runs the singleton jobs"),
                    false => tracing::warn!(replica = %l.me, holder = ?view.lease.as_ref().map(|x| &x.holder), "follower: another replica holds the lease"),
                }
            }
        }
        Err(e) => {
            // Without the store there is no lease: stop acting as leader.
            l.leader.store(false, Ordering::SeqCst);
            tracing::warn!("leader lease: {e}");
        }
    }
    ctx.metrics.leader.set(l.is_leader() as i64);
    ctx.metrics.store_conflicts.set(store.conflicts() as i64);
    // Announce this replica (at most once a second).
    let rec = ReplicaRecord { id: l.me.clone(), http_addr: ctx.estate.config.http_addr.to_string(), started_at: l.started_at, seen_at_ms: now };
    if let Ok(bytes) = serde_json::to_vec(&rec) {
        let key = format!("{REPLICA_PREFIX}{}", l.me);
        let old = store.get(crate::store::Space::Meta, &key).ok().flatten();
        let _ = store.compare_and_swap(crate::store::Space::Meta, &key, old.as_deref(), Some(bytes));
    }
}

/// A replica stopping: it no longer announces itself, and a leader hands the lease back (its
/// expiry set to now), so another replica takes over at its next step instead of a lease later.
pub(super) fn leave(ctx: &Ctx) {
    let l = &ctx.leader;
    if !l.replicated() {
        return;
    }
    let store = ctx.estate.store();
    let key = format!("{REPLICA_PREFIX}{}", l.me);
    if let Ok(Some(old)) = store.get(crate::store::Space::Meta, &key) {
        let _ = store.compare_and_swap(crate::store::Space::Meta, &key, Some(&old), None);
    }
    if l.is_leader() {
        let _ = crate::estate::lease::release(store, &l.me, l.token.load(Ordering::SeqCst), now_ms());
        l.leader.store(false, Ordering::SeqCst);
        tracing::info!(replica = %l.me, "leader lease handed back");
    }
}

/// How long a replica counts as live after its last announcement.
pub fn live_window(ctx: &Ctx) -> Duration {
    ctx.leader.ttl.map(|t| (t * 3).max(Duration::from_secs(5))).unwrap_or(Duration::from_secs(30))
}

/// The replicas seen within the last `within` (this one included), by id.
pub fn replicas(store: &dyn crate::store::Store, within: Duration) -> Vec<ReplicaRecord> {
    let since = now_ms() - within.as_millis() as i64;
    store
        .scan_prefix(crate::store::Space::Meta, REPLICA_PREFIX)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<ReplicaRecord>(&v).ok())
        .filter(|r| r.seen_at_ms >= since)
        .collect()
}
