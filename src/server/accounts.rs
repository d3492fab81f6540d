//! Account JWTs on their way to nats-server: pushing them, the role cache that avoids a push
//! per request, and the batched revocations of burned tokens' bootstrap users.

use super::Ctx;
use crate::error::{ApiError, ErrorCode};
use crate::estate::{AccountRecord, RoleRecord};
use crate::names::ServiceId;
use crate::subjects;
use crate::telemetry::RequestLabels;
use std::time::Duration;
use tokio::sync::mpsc;

/// Push `acct`'s JWT (caller holds the account lock) and remember what the servers hold.
///
/// With several replicas, the caller's copy of the record may lag another replica's newer one
/// (its store's watch had not delivered it yet): the record is read fresh from the store and
/// the newer of the two pushed, so a push never takes a newer JWT (a new role's key, a
/// revocation) back.
pub(super) async fn push(ctx: &Ctx, acct: &AccountRecord, why: &str) -> Result<(), ApiError> {
    let fresh = match ctx.leader.replicated() {
        true => tokio::task::block_in_place(|| ctx.estate.account_fresh(&acct.name)).ok().filter(|f| f.iat > acct.iat),
        false => None,
    };
    let acct = fresh.as_ref().unwrap_or(acct);
    // The SYS connection may be moving to another node of a clustered hub (its node died):
    // try a few times over a few seconds before giving up.
    let mut r = super::push::push_account(&ctx.sys, &acct.name, &acct.jwt).await;
    for pause in [250u64, 750, 1500, 2500] {
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
        r = super::push::push_account(&ctx.sys, &acct.name, &acct.jwt).await;
    }
    let outcome = if r.is_ok() { "ok" } else { "error" };
    ctx.metrics.account_pushes.get_or_create(&RequestLabels { endpoint: why.into(), outcome: outcome.into() }).inc();
    match r {
        Ok(()) => {
            if let Ok(mut p) = ctx.cache.pushed.lock() {
                p.insert(acct.name.clone(), acct.iat);
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(ApiError::new(ErrorCode::Unavailable, "could not update nats-server with the account; retry shortly"))
        }
    }
}

fn pushed_current(ctx: &Ctx, acct: &AccountRecord) -> bool {
    ctx.cache.pushed.lock().map(|p| p.get(&acct.name) == Some(&acct.iat)).unwrap_or(false)
}

/// A service's account and role, as last pushed.
pub(super) type RoleEntry = std::sync::Arc<(std::sync::Arc<AccountRecord>, RoleRecord)>;

/// Keep `acct` as the account's record in the cache if it is at least as new as the one held;
/// the one held. The cache holds one record per account: the role entries name their account,
/// they do not carry a copy (one per service held the account JWT once per service, and once
/// per version revocations made: a 100,000-service estate reached 18 GiB that way).
pub(super) fn remember_account(ctx: &Ctx, acct: AccountRecord) -> std::sync::Arc<AccountRecord> {
    let held = ctx.cache.accounts.read().ok().and_then(|m| m.get(&acct.name).cloned());
    match held {
        Some(a) if a.iat > acct.iat || (a.iat == acct.iat && a.jwt == acct.jwt) => a,
        _ => {
            let a = std::sync::Arc::new(acct);
            if let Ok(mut m) = ctx.cache.accounts.write() {
                m.insert(a.name.clone(), a.clone());
            }
            a
        }
    }
}

/// Keep `role` (and its account, [`remember_account`]) in the cache; the entry.
pub(super) fn remember(ctx: &Ctx, acct: AccountRecord, role: RoleRecord) -> RoleEntry {
    let acct = remember_account(ctx, acct);
    if let Ok(mut m) = ctx.cache.roles.write() {
        m.insert(role.clone());
    }
    std::sync::Arc::new((acct, role))
}

/// The cached role of `sid` with its account's record as the cache holds it.
fn cached(ctx: &Ctx, sid: &ServiceId) -> Option<RoleEntry> {
    let role = ctx.cache.roles.read().ok()?.get(sid).cloned()?;
    let acct = ctx.cache.accounts.read().ok()?.get(&role.account).cloned()?;
    Some(std::sync::Arc::new((acct, role)))
}

/// The tenant account and role of `sid`, created and pushed if needed (cached in memory; every
/// change to either goes through here).
pub(super) async fn ensure_role_pushed(ctx: &Ctx, sid: &ServiceId) -> Result<RoleEntry, ApiError> {
    if let Some(hit) = cached(ctx, sid) {
        if pushed_current(ctx, &hit.0) {
            return Ok(hit);
        }
    }
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let (mut acct, role, _changed) = e.ensure_role_locked(sid)?;
    if !acct.carries_key(&role.key) {
        // Another replica made the role and has not stored the account JWT that carries its
        // key yet (or this replica has not seen it): an identity signed with that key now
        // would be refused. Read the account from the store; still without: serve again.
        acct = e.account_fresh(&acct.name).map_err(ApiError::from)?;
        if !acct.carries_key(&role.key) {
            // Nor does the store's: the replica that made the role stopped, or lost a race,
            // before it stored the account JWT with the role's key. Mend it (or, if another
            // replica is mending it right now, serve again once it has).
            tracing::info!(account = %acct.name, service = %sid, "the account JWT lacks a stored role's key; signing it again");
            acct = e.resign_for_roles(&acct.name).map_err(ApiError::from)?;
            if !acct.carries_key(&role.key) {
                return Err(ApiError::new(ErrorCode::Unavailable, super::RACED));
            }
        }
    }
    if !pushed_current(ctx, &acct) {
        push(ctx, &acct, "role").await?;
    }
    Ok(remember(ctx, acct, role))
}


/// The TILLIT account (with the agents' scoped key pushed) for an agent of `site`, and its
/// durable consumer, ready before the token burns.
pub(super) async fn agent_entry(ctx: &Ctx, site: &str, user_pub: &str) -> Result<RoleEntry, ApiError> {
    let e = &ctx.estate;
    if e.site(site).map_err(ApiError::from)?.is_none() {
        return Err(ApiError::forbidden(format!("site {site} is not registered (tillit site add)")));
    }
    let acct = {
        let _g = e.account_lock().lock().await;
        let (acct, changed) = e.ensure_agent_role_locked().map_err(ApiError::from)?;
        if changed || !pushed_current(ctx, &acct) {
            push(ctx, &acct, "agent_role").await?;
        }
        acct
    };
    let consumer = subjects::agent_consumer(site, user_pub);
    ctx.events.ensure_agent_consumer(&consumer, site).await.map_err(|err| {
        tracing::error!("cannot create the agent's consumer {consumer}: {err}");
        ApiError::new(ErrorCode::Unavailable, "could not create the agent's event consumer; retry shortly")
    })?;
    let sid = crate::names::agent_service_id(site).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let role = RoleRecord {
        account: acct.name.clone(),
        service: sid,
        key: e.agent_role().map_err(ApiError::from)?.map(|r| r.key).unwrap_or_default(),
        permissions: crate::estate::sites::agent_permissions(),
        created_at: 0,
        updated_at: 0,
        previous: vec![],
    };
    Ok(std::sync::Arc::new((remember_account(ctx, acct), role)))
}

// === bootstrap revocations ===

/// The live set of revoked bootstrap users and the last BOOTSTRAP JWT `iat` pushed.
pub(super) struct Revocations {
    live: std::collections::BTreeMap<String, (i64, i64)>,
    last_iat: i64,
}

/// Load the live revocations from the token records and push them (serve start).
pub(super) async fn start_revocations(ctx: &Ctx) -> Result<Revocations, ApiError> {
    let due_by = ctx.estate.clock().now_unix() - REPLY_GRACE_SECS;
    let live = ctx.estate.live_bootstrap_revocations(due_by).map_err(ApiError::from)?;
    let mut r = Revocations { live, last_iat: 0 };
    push_revocations(ctx, &mut r, "reconcile").await?;
    Ok(r)
}

async fn push_revocations(ctx: &Ctx, r: &mut Revocations, why: &str) -> Result<(), ApiError> {
    let now = ctx.estate.clock().now_unix();
    r.live.retain(|_, (_, exp)| *exp > now);
    let _g = ctx.estate.account_lock().lock().await;
    let acct = ctx.estate.sign_bootstrap(&r.live, r.last_iat).map_err(ApiError::from)?;
    r.last_iat = acct.iat;
    push(ctx, &acct, why).await
}

/// Burned tokens' bootstrap users are revoked by pushing the BOOTSTRAP account with the live
/// revocations, read from the token records (so with several replicas the leader revokes the
/// users of tokens any replica burned). A token is revoked [`REPLY_GRACE_SECS`] after its use:
/// its enrollee may still be reading the reply on the bootstrap connection, or sending the same
/// request again after a lost reply (after [`crate::client::call::ATTEMPT_TIMEOUT`]), and a push
/// closes that connection. Each push makes nats-server re-check every connection of that
/// account (two user JWT signature checks each), so pushes are at least [`REVOKE_SPACING`]
/// apart: measured with 8,000 bootstrap connections open, one push a second took a third of
/// nats-server's CPU. A burned token's user can only ask for an enrollment the control plane
/// refuses (`token_used`), or answers with its first reply, so these delays are a fair bound.
pub(super) const REPLY_GRACE_SECS: i64 = 3;
pub(super) const REVOKE_SPACING: Duration = Duration::from_secs(5);
/// How often the revoker looks for revocations due.
const REVOKE_TICK: Duration = Duration::from_millis(500);
/// How often the revoker reads the burned tokens from the store again.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// The revocations due at `now` (used at least [`REPLY_GRACE_SECS`] ago) and whether some are
/// still in their grace.
fn due(mut live: std::collections::BTreeMap<String, (i64, i64)>, now: i64) -> (std::collections::BTreeMap<String, (i64, i64)>, bool) {
    let young = live.values().any(|(at, _)| *at + REPLY_GRACE_SECS > now);
    live.retain(|_, (at, _)| *at + REPLY_GRACE_SECS <= now);
    (live, young)
}

/// Revoke burned tokens' bootstrap users (on the leader), gathering those due into one
/// BOOTSTRAP account update, at most one per [`REVOKE_SPACING`].
///
/// The live revocations are read from the token records once, then kept up to date from the
/// tokens this replica burns (the channel); they are read again when another replica changed
/// the store, and every [`RESCAN_EVERY`]. (Reading every token at each tick made each enrollment
/// cost more the more tokens the estate had used.)
pub(super) async fn run_revoker(ctx: std::sync::Arc<Ctx>, mut r: Revocations, mut rx: mpsc::UnboundedReceiver<(String, i64)>) {
    let mut tick = tokio::time::interval(REVOKE_TICK);
    let mut last_push: Option<tokio::time::Instant> = None;
    // Whether a revocation may be waiting: a token was used here, or (with replicas) another
    // replica changed the store.
    let mut pending = true;
    let mut seen_changes = ctx.estate.store().others_changes();
    // The live revocations as known here (`None`: read them from the token records).
    let mut known: Option<std::collections::BTreeMap<String, (i64, i64)>> = None;
    let mut scanned = tokio::time::Instant::now();
    // When the live revocations were last weighed: at most once per tick (weighing copies them
    // all, and a burst of enrollments sends one burn each).
    let mut weighed: Option<tokio::time::Instant> = None;
    let burned = |known: &mut Option<std::collections::BTreeMap<String, (i64, i64)>>, (user, exp): (String, i64)| {
        if let Some(k) = known.as_mut() {
            k.insert(user, (ctx.estate.clock().now_unix(), exp));
        }
    };
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(b) => {
                    burned(&mut known, b);
                    pending = true;
                }
                None => return,
            },
            _ = tick.tick() => {}
        }
        while let Ok(b) = rx.try_recv() {
            burned(&mut known, b);
            pending = true;
        }
        let changes = ctx.estate.store().others_changes();
        if changes != seen_changes {
            pending = true;
            known = None;
        }
        seen_changes = changes;
        if !ctx.leader.is_leader() {
            r.live.clear();
            continue;
        }
        if !pending {
            continue;
        }
        if last_push.is_some_and(|p| p.elapsed() < REVOKE_SPACING) {
            continue;
        }
        if weighed.is_some_and(|w| w.elapsed() < REVOKE_TICK) {
            continue;
        }
        weighed = Some(tokio::time::Instant::now());
        if known.is_none() || scanned.elapsed() >= RESCAN_EVERY {
            match ctx.estate.live_bootstrap_revocations(ctx.estate.clock().now_unix() - REPLY_GRACE_SECS) {
                Ok(k) => known = Some(k),
                Err(e) => {
                    tracing::warn!("cannot read the burned tokens: {e}; trying again");
                    continue;
                }
            }
            scanned = tokio::time::Instant::now();
        }
        let now = ctx.estate.clock().now_unix();
        let Some(k) = known.as_mut() else { continue };
        k.retain(|_, (_, exp)| *exp > now);
        // Burns since the last weighing may take it past what the JWT can carry.
        crate::estate::bound_revocations(k, now - REPLY_GRACE_SECS);
        let (stored, young) = due(k.clone(), now);
        pending = young;
        if stored.keys().eq(r.live.keys()) {
            continue;
        }
        if !ctx.leader.fenced(ctx.estate.store()) {
            pending = true;
            continue;
        }
        let n = stored.len();
        r.live = stored;
        last_push = Some(tokio::time::Instant::now());
        match push_revocations(&ctx, &mut r, "bootstrap_revocation").await {
            Ok(()) => tracing::debug!(live = n, "bootstrap users revoked"),
            Err(e) => {
                r.live.clear();
                pending = true;
                tracing::error!("cannot revoke bootstrap users: {}", e.message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_are_due_after_the_reply_grace() {
        let live: std::collections::BTreeMap<String, (i64, i64)> =
            [("old".to_string(), (100, 900)), ("young".to_string(), (104, 900))].into_iter().collect();
        let (due_now, young) = due(live.clone(), 105);
        assert_eq!(due_now.keys().collect::<Vec<_>>(), vec!["old"], "used 5 s ago: due; 1 s ago: in its grace");
        assert!(young);
        let (due_later, young) = due(live, 104 + REPLY_GRACE_SECS);
        assert_eq!(due_later.len(), 2);
        assert!(!young);
    }
}
