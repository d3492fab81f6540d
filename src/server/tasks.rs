//! The control plane's background work, by name. Each periodic job is a named function run
//! every so often ([`periodic`] is the one list); the long-running ones ([`start`]) are named
//! too, so a log line or a stuck task says which it is. Time inside a job comes from the
//! injected clock ([`crate::clock`]).

use super::{accounts, admin, breakglass, ca, events, reconcile, sites, status, Ctx};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::Instrument;

type Step = for<'a> fn(&'a Arc<Ctx>) -> BoxFuture<'a, ()>;

/// A periodic job: its name, how often it runs, and one run of it.
pub(super) struct Job {
    pub(super) name: &'static str,
    pub(super) every: Duration,
    /// Run by the leader only (one replica of several; always on sled).
    pub(super) singleton: bool,
    step: Step,
}

/// Every periodic job of the control plane.
pub(super) fn periodic(ctx: &Ctx) -> Vec<Job> {
    vec![
        Job { name: "flush-store", every: Duration::from_secs(1), singleton: false, step: |c| Box::pin(flush_store(c)) },
        Job { name: "refresh-caches", every: Duration::from_millis(250), singleton: false, step: |c| Box::pin(refresh_caches(c)) },
        Job { name: "ca-rollout", every: ca::ROLLOUT_TICK, singleton: true, step: |c| Box::pin(ca::tick(c)) },
        Job { name: "heal-agent-consumers", every: Duration::from_secs(5), singleton: true, step: |c| Box::pin(sites::heal_agent_consumers(c)) },
        Job { name: "site-gauges", every: Duration::from_secs(5), singleton: false, step: |c| Box::pin(sites::refresh_site_gauges(c)) },
        Job { name: "reconcile-accounts", every: ctx.estate.config.reconcile_interval, singleton: true, step: |c| Box::pin(reconcile_accounts(c)) },
        Job { name: "retire-envelope-keys", every: Duration::from_secs(60), singleton: true, step: |c| Box::pin(retire_envelope_keys(c)) },
        Job { name: "refresh-summary", every: status::SUMMARY_EVERY, singleton: false, step: |c| Box::pin(refresh_summary(c)) },
        Job { name: "refresh-responder-access", every: Duration::from_secs(3600), singleton: false, step: |c| Box::pin(refresh_responder_access(c)) },
        Job { name: "refresh-store-access", every: Duration::from_secs(3600), singleton: false, step: |c| Box::pin(refresh_store_access(c)) },
        Job { name: "drop-expired-replies", every: Duration::from_secs(30), singleton: true, step: |c| Box::pin(super::replies::drop_expired(c)) },
        Job { name: "sweep-ocsp-answers", every: super::answers::SWEEP_EVERY, singleton: true, step: |c| Box::pin(super::answers::sweep(c)) },
        Job { name: "sweep-caller-keys", every: super::callers::SWEEP_EVERY, singleton: true, step: |c| Box::pin(super::callers::sweep(c)) },
        Job { name: "read-break-glass-connections", every: breakglass::READ_EVERY, singleton: true, step: |c| Box::pin(breakglass::read_connections(c)) },
        Job { name: "retire-role-keys", every: Duration::from_secs(300), singleton: true, step: |c| Box::pin(admin::retire_leftover_keys(c, false)) },
        Job { name: "nudge-after-auth-switch", every: Duration::from_secs(10), singleton: true, step: |c| Box::pin(admin::nudge_after_auth_switch(c)) },
    ]
}

/// Start every background task: the periodic jobs, the batched bootstrap revoker, and the
/// watcher of nats-server's authentication failures.
pub(super) fn start(ctx: &Arc<Ctx>, revoker: BoxFuture<'static, ()>) -> Vec<JoinHandle<()>> {
    let mut tasks: Vec<JoinHandle<()>> = periodic(ctx).into_iter().map(|job| spawn_job(ctx.clone(), job)).collect();
    tasks.push(spawn_named("bootstrap-revoker", revoker));
    tasks.push(spawn_named("leader-lease", Box::pin(super::leader::run(ctx.clone()))));
    tasks.push(spawn_named("auth-error-watch", Box::pin(events::watch_auth_errors(ctx.clone()))));
    tasks.push(spawn_named("publish-ocsp-answers", Box::pin(super::answers::run(ctx.clone()))));
    tasks.push(spawn_named("publish-caller-keys", Box::pin(super::callers::run(ctx.clone()))));
    tasks.push(spawn_named("auth-callout", Box::pin(super::callout::run(ctx.clone()))));
    tasks.push(spawn_named(
        "follow-ocsp-answers",
        Box::pin(crate::ocsp::follow::follow(ctx.api.clone(), "$JS.API".into(), ctx.answers.copy.clone())),
    ));
    tasks
}

/// Run `fut` as a task named `name` (its log lines carry the name).
pub(super) fn spawn_named(name: &'static str, fut: BoxFuture<'static, ()>) -> JoinHandle<()> {
    tokio::spawn(fut.instrument(tracing::info_span!("task", name)))
}

fn spawn_job(ctx: Arc<Ctx>, job: Job) -> JoinHandle<()> {
    let (name, every, step, singleton) = (job.name, job.every, job.step, job.singleton);
    spawn_named(
        name,
        Box::pin(async move {
            let mut pause = every;
            loop {
                tokio::time::sleep(pause).await;
                if singleton && !ctx.leader.fenced(ctx.estate.store()) {
                    continue;
                }
                let began = std::time::Instant::now();
                step(&ctx).await;
                pause = spacing(every, began.elapsed());
            }
        }),
    )
}

/// How many times its own length a job rests between passes, at least.
const REST_FACTOR: u32 = 20;

/// The pause after a pass that took `took` of a job due `every`: a pass over a large estate
/// (the sweeps, the status summary: linear in its records) runs less often, so background
/// passes take at most a twentieth of a core however large the estate grows.
pub(crate) fn spacing(every: Duration, took: Duration) -> Duration {
    every.max(took.saturating_mul(REST_FACTOR))
}

/// Step the lease once, before the start-up steps (a replicated control plane only).
pub(super) async fn first_lease_step(ctx: &Arc<Ctx>) {
    if !ctx.leader.replicated() {
        return;
    }
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || super::leader::step_now(&c)).await;
}

/// Drop what this replica derived from the store once another replica changed it (on one
/// `serve` nothing else changes the store, and this costs one atomic load).
async fn refresh_caches(ctx: &Arc<Ctx>) {
    let n = ctx.estate.store().others_changes();
    if n == ctx.cache.seen_changes.swap(n, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    ctx.estate.reload_caches();
    ctx.cache.clear();
}

// === the jobs ===

/// The store is made durable in the background; the audit log is the durability point.
async fn flush_store(ctx: &Arc<Ctx>) {
    let store = ctx.estate.store_arc();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.sync()).await {
        tracing::error!("store flush failed: {e}");
    }
}

/// Keep this replica's store access valid (a JetStream store only).
/// Keep this data dir's `responder/access.json` current (`tillit responder` reads it).
pub(super) async fn refresh_responder_access(ctx: &Arc<Ctx>) {
    let c = ctx.clone();
    match tokio::task::spawn_blocking(move || c.estate.refresh_responder_access(crate::init::RESPONDER_ACCESS_TTL)).await {
        Ok(Ok(true)) => tracing::info!("OCSP responder access renewed in this data dir"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::error!("cannot renew the OCSP responder access: {e}; `tillit responder` cannot follow the answers once it expires"),
        Err(e) => tracing::error!("responder access renewal: {e}"),
    }
}

async fn refresh_store_access(ctx: &Arc<Ctx>) {
    if !ctx.leader.replicated() {
        return;
    }
    let c = ctx.clone();
    match tokio::task::spawn_blocking(move || c.estate.refresh_store_access(crate::init::STORE_ACCESS_TTL)).await {
        Ok(Ok(true)) => tracing::info!("store access renewed in this replica's data dir"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::error!("cannot renew the store access: {e}; the replica cannot reach the store once it expires"),
        Err(e) => tracing::error!("store access renewal: {e}"),
    }
}

/// Re-push every account JWT nats-server serves out of date ([`reconcile`]).
async fn reconcile_accounts(ctx: &Arc<Ctx>) {
    let n = reconcile::check_all(ctx).await;
    if n > 0 {
        tracing::warn!(accounts = n, "re-pushed account JWTs nats-server served out of date");
    }
}

/// Drop envelope signing keys past their retirement from the trust set.
async fn retire_envelope_keys(ctx: &Arc<Ctx>) {
    match ctx.estate.retire_envelope_keys() {
        Ok(true) => tracing::info!("retired an envelope signing key"),
        Ok(false) => {}
        Err(e) => tracing::error!("cannot retire envelope keys: {e}"),
    }
}

/// Make `status`'s summary and the gauges again (a pass over the store, off the async threads).
async fn refresh_summary(ctx: &Arc<Ctx>) {
    let c = ctx.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || status::refresh_summary(&c)).await {
        tracing::warn!("cannot count the identities for status: {e}");
    }
}

// === at start and at stop ===

/// Make sure the servers hold the current JWT of every account (a restored or new server may
/// not), then retire role keys left over from permission changes before a restart.
pub(super) async fn push_all_accounts(ctx: &Arc<Ctx>) -> Result<(), super::ServeError> {
    let e = &ctx.estate;
    for acct in e.accounts().map_err(|err| super::ServeError::Creds(err.to_string()))? {
        // BOOTSTRAP is pushed with its live revocations (`accounts::start_revocations`). SYS is
        // pushed too: a break-glass rotation (done with `serve` stopped) revoked a user in it,
        // and the hub's restart brought back the JWT its config preloads.
        if acct.name == crate::estate::BOOTSTRAP_ACCOUNT {
            continue;
        }
        let _g = e.account_lock().lock().await;
        if let Err(err) = accounts::push(ctx, &acct, "reconcile").await {
            tracing::warn!("{}", err.message);
        }
    }
    Ok(())
}

/// What the replay cache's snapshot is MACed under.
const REPLAY_KEY_LABEL: &str = "tillit replay cache v1";

/// Take the previous run's request ids back (a clean stop left them, MACed); without them, refuse
/// requests signed before this start, which that run may have seen.
pub(super) fn restore_replay_cache(ctx: &Ctx) {
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    let path = e.dir.replay_snapshot();
    let key = e.vault_key(REPLAY_KEY_LABEL);
    let restored = match std::fs::read(&path) {
        Ok(bytes) => {
            let _ = std::fs::remove_file(&path);
            match serde_json::from_slice::<crate::replay::Snapshot>(&bytes) {
                Ok(snap) if ctx.replay.restore(&snap, &key, now) => {
                    tracing::info!(ids = snap.ids.len(), "request ids of the previous run restored");
                    true
                }
                _ => {
                    tracing::warn!(path = %path.display(), "the saved request ids do not verify; refusing requests signed before this start");
                    false
                }
            }
        }
        Err(_) => false,
    };
    if !restored {
        ctx.replay.set_not_before(now);
    }
}

/// Hand the live request ids to the next run (0600, MACed).
pub(super) fn save_replay_cache(ctx: &Ctx) {
    let e = &ctx.estate;
    let snap = ctx.replay.snapshot(&e.vault_key(REPLAY_KEY_LABEL), e.clock().now_unix());
    let r = serde_json::to_vec(&snap)
        .map_err(std::io::Error::other)
        .and_then(|b| crate::fsutil::write_atomic(&e.dir.replay_snapshot(), &b, 0o600));
    if let Err(err) = r {
        tracing::warn!("cannot save the request ids for the next run (it will refuse requests signed before it starts): {err}");
    }
}

