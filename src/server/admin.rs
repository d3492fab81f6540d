//! Admin verbs that change what runs: grant, ungrant, grants, revoke, list.
//!
//! A grant changes the service's role template in its tenant account; the re-signed account JWT
//! is pushed (nats-server then bounces that role's connections, which come back at once with the
//! new permissions), and only then recorded. A revocation adds the service's user keys to the
//! account's revocations (the server drops them) and marks the identities revoked, so they never
//! renew; certificate serials of revoked identities are what CRL and OCSP report.

use super::accounts::{push, remember, remember_account};
use super::Ctx;
use crate::audit::Entry;
use crate::clock::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::estate::default_permissions;
use crate::estate::{IdentityRecord, IdentityState, RoleRecord};
use crate::identity::IdentityKind;
use crate::names::ServiceId;
use crate::policy::grants::{self, Change, ChangeError};
use crate::estate::{MAX_TOKENS_PER_REQUEST, MAX_TOKEN_TTL_SECS};
use crate::proto::{
    IdentityStatus, GrantRequest, GrantsReply, IdentityEntry, ListReply, ListRequest, RevokeReply, RevokedIdentity, RevokeRequest, ServiceRequest,
    TokenCreateReply, TokenCreateRequest,
};
use crate::policy::roles::Access;
use crate::proto::{AdminAddRequest, AdminInfo, AdminListReply, AdminListRequest, AdminRole};
use std::sync::Arc;
use std::time::Duration;

// === verbs ===

serve_verbs! {
    TokenCreate(caller) => token_create, Grant(caller) => grant, Ungrant(caller) => ungrant, Grants => grants, Revoke(caller) => revoke,
    List(call) => list, AdminAdd(caller) => admin_add, AdminList => admin_list,
}

fn grants_reply(role: &RoleRecord) -> GrantsReply {
    let d = default_permissions(&role.service);
    GrantsReply {
        service: role.service.clone(),
        publish: role.permissions.publish.allow.clone(),
        subscribe: role.permissions.subscribe.allow.clone(),
        granted_pub: grants::granted(&role.permissions.publish.allow, &d.publish.allow),
        granted_sub: grants::granted(&role.permissions.subscribe.allow, &d.subscribe.allow),
        warnings: vec![],
    }
}

/// A grant for a service nothing ever enrolled as is kept (it applies from the first
/// enrollment), but it is often a typo: say so.
fn never_enrolled(ctx: &Ctx, sid: &crate::names::ServiceId) -> Vec<String> {
    match ctx.estate.identities_of(sid) {
        Ok(ids) if ids.is_empty() => vec![format!(
            "{sid} has never enrolled: check the name (the grant is kept and applies from its first enrollment)"
        )],
        _ => vec![],
    }
}

fn change_err(e: ChangeError) -> ApiError {
    match e {
        ChangeError::NotGranted(..) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        ChangeError::TooMany => ApiError::new(ErrorCode::LimitExceeded, e.to_string()),
        ChangeError::Empty | ChangeError::Subject(_) | ChangeError::Default(..) => ApiError::bad_request(e.to_string()),
    }
}

/// Grant or ungrant: the new permissions ([`grants::apply`]), recorded, pushed, announced.
async fn change(ctx: &Arc<Ctx>, actor: &str, req: GrantRequest, how: Change) -> Result<GrantsReply, ApiError> {
    // A malformed request is refused before any role is looked at (or created).
    grants::check_change(&req.publish, &req.subscribe).map_err(change_err)?;
    let sid = &req.service;
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let (acct, role, _) = e.ensure_role_locked(sid).map_err(ApiError::from)?;
    // What another replica changed a moment ago must be the base (a lagging copy would undo it).
    let role = e.role_fresh(sid).map_err(ApiError::from)?.unwrap_or(role);
    let acct = e.account_fresh(&acct.name).map_err(ApiError::from)?;
    let defaults = default_permissions(sid);
    let permissions = grants::apply(&role.permissions, &defaults, &req.publish, &req.subscribe, how, &sid.to_string()).map_err(change_err)?;
    let action = how.verb();
    if permissions == role.permissions {
        return Ok(GrantsReply { warnings: never_enrolled(ctx, sid), ..grants_reply(&role) });
    }
    // The new permissions go to a new scoped key; the old one stays (its users stay connected)
    // until they moved to the new key or the grace period ends.
    let now = e.clock().now_unix();
    let change = e.change_role(&acct, &role, permissions, now + RETIRE_GRACE.as_secs().max(1) as i64)?;
    let (next, signed, rekey, b) = (change.role, change.account, change.rekeyed, change.batch);
    let entry = Entry::ok(actor, action, &sid.to_string())
        .detail(serde_json::json!({ "pub": req.publish, "sub": req.subscribe, "account_iat": signed.iat }))
        .batch(b);
    // Recorded first, then live (the reconciler completes a push that fails here).
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    remember(ctx, signed.clone(), next.clone());
    push_recorded(ctx, &signed, action).await?;
    tracing::info!(service = %sid, action, "permissions changed");
    let data = serde_json::json!({ "service": sid.to_string(), "pub": next.permissions.publish.allow, "sub": next.permissions.subscribe.allow });
    if rekey {
        notify_instances(ctx, sid, &data).await;
        spawn_retirement(ctx, sid.clone(), role.key.clone());
    }
    if let Err(err) = ctx.events.publish(crate::subjects::EventKind::PermissionsChanged, None, &sid.to_string(), &data, e.clock().now_unix()).await {
        tracing::error!(service = %sid, "cannot publish permissions.changed: {err}");
    }
    Ok(GrantsReply { warnings: never_enrolled(ctx, sid), ..grants_reply(&next) })
}

/// How long a role's former key stays after a permission change. Instances using the tillit
/// client library move to the new key within milliseconds of the notification (a renewal and a
/// reconnect they start themselves, after flushing: nothing in flight is lost); instances that
/// do not (other clients, dead processes) are disconnected when the key is removed, and
/// reconnect with the new permissions. Either way the change holds within 2 s.
pub(super) const RETIRE_GRACE: Duration = Duration::from_millis(1500);

/// After a switch back to JWT mode: services whose credentials callout mode issued (signed by the
/// account's key: without the callout they reach only the control plane) are told to renew,
/// which the client library does, onto their role's key and full permissions. Told again at
/// each tick while any such identity is live: nats-server 2.14 needs a restart before it drops
/// the callout (nats-server#8272), and until then a renewal may not get through. Once none is
/// left, `meta/auth_nudged` records the switch as done.
pub(super) async fn nudge_after_auth_switch(ctx: &Arc<Ctx>) {
    let e = &ctx.estate;
    let Ok(Some(settings)) = e.auth_settings() else { return };
    if settings.mode != crate::estate::callout::AuthMode::Jwt || e.meta_flag::<i64>("auth_nudged").ok().flatten() == Some(settings.since) {
        return;
    }
    let now = e.clock().now_unix();
    let services: std::collections::BTreeSet<ServiceId> = match e.identities() {
        Ok(ids) => ids
            .into_iter()
            .filter(|i| i.state == IdentityState::Active && i.expires_at > now && i.role_key.is_none())
            .filter_map(|i| i.service)
            .collect(),
        Err(err) => {
            tracing::warn!("cannot read the identities to nudge after the switch to JWT mode: {err}");
            return;
        }
    };
    if services.is_empty() {
        if let Err(err) = e.set_meta_flag("auth_nudged", &settings.since) {
            tracing::warn!("cannot note that every service moved to JWT mode: {err}");
        }
        return;
    }
    let data = serde_json::json!({ "why": "auth_mode", "mode": "jwt" });
    for sid in &services {
        notify_instances(ctx, sid, &data).await;
    }
    tracing::info!(services = services.len(), "told services with callout-mode credentials to renew for JWT mode");
}

/// Tell a service's running instances their permissions changed (a signed envelope on their
/// notification subject): the client library renews onto the new key and reconnects.
async fn notify_instances(ctx: &Ctx, sid: &ServiceId, data: &serde_json::Value) {
    let e = &ctx.estate;
    let aud = sid.spiffe_id(e.trust_domain());
    let subject = crate::subjects::notify_subject(&sid.account_name(), &sid.project, &sid.service);
    match ctx.events.sign_only(crate::subjects::EventKind::PermissionsChanged, &sid.to_string(), &aud, data, e.clock().now_unix()) {
        Ok(token) => {
            if let Err(err) = ctx.api.publish(subject, token.into()).await {
                tracing::warn!(service = %sid, "cannot notify instances: {err}");
            }
        }
        Err(err) => tracing::warn!(service = %sid, "cannot sign the notification: {err}"),
    }
}

/// End `old_key`'s grace once every active instance moved off it, or after [`RETIRE_GRACE`]:
/// its template becomes the new permissions (the server reconnects whoever still uses it).
fn spawn_retirement(ctx: &Arc<Ctx>, sid: ServiceId, old_key: String) {
    let ctx = ctx.clone();
    // Whether every live instance moved off `old_key`, over these identity records.
    fn all_moved<'a>(ids: impl IntoIterator<Item = &'a IdentityRecord>, old_key: &str, now: i64) -> bool {
        ids.into_iter().filter(|i| i.state == IdentityState::Active && i.expires_at > now).all(|i| i.role_key.as_deref() != Some(old_key))
    }
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        // Finding a service's identities scans them all: do it once, then poll only those that
        // held the old key, and confirm over a full scan before ending the grace early.
        let watched: Vec<String> = ctx
            .estate
            .identities_of(&sid)
            .map(|ids| ids.into_iter().filter(|i| i.role_key.as_deref() == Some(old_key.as_str())).map(|i| i.user_public_key).collect())
            .unwrap_or_default();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let e = &ctx.estate;
            let now = e.clock().now_unix();
            let polled: Vec<IdentityRecord> = watched.iter().filter_map(|u| e.identity(u).ok().flatten()).collect();
            let moved = polled.len() == watched.len()
                && all_moved(&polled, &old_key, now)
                && e.identities_of(&sid).map(|ids| all_moved(&ids, &old_key, now)).unwrap_or(false);
            if moved || start.elapsed() >= RETIRE_GRACE {
                // Another replica's change may come first: settle again from the fresh state.
                for attempt in 0..5u64 {
                    match retire_role_key(&ctx, &sid, &old_key, moved).await {
                        Err(err) if err.message == super::RACED && attempt < 4 => {
                            tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
                        }
                        Err(err) => {
                            tracing::error!(service = %sid, "cannot retire the former key: {}", err.message);
                            break;
                        }
                        Ok(()) => break,
                    }
                }
                // Callout mode: connections carry the permissions the callout gave them, which
                // no role key change reaches. The answer keys of the service's identities are
                // replaced: every server drops the connections they admitted, which come back
                // with the new permissions.
                if ctx.estate.auth_mode() == crate::estate::callout::AuthMode::Callout {
                    let users: Vec<String> = match ctx.estate.identities_of(&sid) {
                        Ok(ids) => ids.into_iter().filter(|i| i.state == IdentityState::Active).map(|i| i.user_public_key).collect(),
                        Err(err) => {
                            tracing::error!(service = %sid, "cannot read the service's identities to drop its connections from before the permission change: {err}");
                            return;
                        }
                    };
                    match rotate_callout_answers(&ctx, &sid.account_name(), &users, "ungrant").await {
                        Ok(()) => tracing::info!(service = %sid, "connections from before the permission change dropped"),
                        Err(err) => tracing::error!(service = %sid, "cannot drop the connections from before the permission change: {}", err.message),
                    }
                }
                return;
            }
        }
    });
}

/// Settle a role's former keys (grace over: current permissions; JWTs all expired: removed),
/// push, record.
pub(super) async fn retire_role_key(ctx: &Ctx, sid: &ServiceId, old_key: &str, all_moved: bool) -> Result<(), ApiError> {
    settle_role(ctx, sid, true, serde_json::json!({ "key": old_key, "all_moved": all_moved })).await
}

async fn settle_role(ctx: &Ctx, sid: &ServiceId, grace_over: bool, why: serde_json::Value) -> Result<(), ApiError> {
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let Some(role) = e.role(sid).map_err(ApiError::from)? else { return Ok(()) };
    let now = e.clock().now_unix();
    // Who may still hold a JWT signed by a former key: live identities of the service whose
    // current JWT it signed (or, for records from before keys were tracked, any live one).
    let live: Vec<(Option<String>, Option<String>)> = e
        .identities_of(sid)
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|i| i.state == IdentityState::Active && i.expires_at > now)
        .map(|i| (i.role_key, i.prev_role_key))
        .collect();
    let held = |k: &str| live.iter().any(|(cur, prev)| cur.as_deref().is_none_or(|r| r == k) || prev.as_deref() == Some(k));
    let Some(next) = e.role_settled(&role, now, grace_over, held) else { return Ok(()) };
    let removed: Vec<String> = role.previous.iter().filter(|p| !next.previous.iter().any(|n| n.key == p.key)).map(|p| p.key.clone()).collect();
    let acct = e.account(&role.account).map_err(ApiError::from)?;
    let signed = e.preview_role_change(&acct, &next).map_err(ApiError::from)?;
    let b = e.role_batch(&next, &signed, &removed).map_err(ApiError::from)?;
    ctx.journal
        .record(Entry::ok("tillit", "retire_key", &sid.to_string()).detail(serde_json::json!({ "why": why, "removed": removed })).batch(b))
        .await
        .map_err(super::journal_error)?;
    remember(ctx, signed.clone(), next);
    push_recorded(ctx, &signed, "retire_key").await?;
    tracing::info!(service = %sid, removed = removed.len(), "former role keys settled");
    Ok(())
}

/// Settle every role's former keys (at start, and periodically: keys whose JWTs all expired
/// leave the account).
pub(super) async fn retire_leftover_keys(ctx: &Ctx, grace_over: bool) {
    // One streaming pass holding only the roles with former keys (one role per service).
    let mut pending = vec![];
    if let Err(e) = ctx.estate.visit_roles(|r| {
        if !r.previous.is_empty() {
            pending.push(r.service);
        }
        true
    }) {
        tracing::error!("cannot read the roles to settle former keys: {e}");
    }
    for service in pending {
        if let Err(err) = settle_role(ctx, &service, grace_over, serde_json::json!("settle")).await {
            tracing::error!(%service, "cannot settle former keys: {}", err.message);
        }
    }
}

async fn grant(ctx: &Arc<Ctx>, caller: &IdentityRecord, req: GrantRequest) -> Result<GrantsReply, ApiError> {
    change(ctx, &caller.id, req, Change::Grant).await
}

async fn ungrant(ctx: &Arc<Ctx>, caller: &IdentityRecord, req: GrantRequest) -> Result<GrantsReply, ApiError> {
    change(ctx, &caller.id, req, Change::Ungrant).await
}

async fn grants(ctx: &Ctx, req: ServiceRequest) -> Result<GrantsReply, ApiError> {
    // As the store holds it now: a replica whose copy lags (it just came back) must not show an
    // operator permissions from before another replica's change.
    let role = ctx
        .estate
        .role_fresh(&req.service)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("{} has no permissions yet (never enrolled or granted)", req.service)))?;
    Ok(grants_reply(&role))
}

async fn revoke(ctx: &Ctx, caller: &IdentityRecord, req: RevokeRequest) -> Result<RevokeReply, ApiError> {
    let sid: &ServiceId = &req.service;
    if req.reason.as_deref().map(str::len).unwrap_or(0) > 512 {
        return Err(ApiError::bad_request("reason is longer than 512 characters"));
    }
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let now = e.clock().now_unix();
    let admin = crate::names::admin_name(sid);
    let targets: Vec<IdentityRecord> = match admin {
        // An admin identity (`tillit admin revoke NAME`): never the last live owner.
        Some(name) => {
            let all = e.identities().map_err(ApiError::from)?;
            let live = |i: &&IdentityRecord| i.kind == IdentityKind::Admin && i.state == IdentityState::Active && i.expires_at > now;
            let owner = |i: &&IdentityRecord| i.access().role == AdminRole::Owner;
            let targets: Vec<IdentityRecord> = all.iter().filter(live).filter(|i| i.name == name).cloned().collect();
            let other_owners = all.iter().filter(live).filter(owner).filter(|i| i.name != name).count();
            if targets.iter().any(|t| owner(&t)) && other_owners == 0 {
                return Err(ApiError::forbidden(format!(
                    "admin {name} is the last live admin with the owner role (the last live owner); add another owner first (`tillit admin add NAME --role owner`), so someone can still manage admins"
                )));
            }
            targets
        }
        None => e.identities_of(sid).map_err(ApiError::from)?.into_iter().filter(|i| i.state == IdentityState::Active).collect(),
    };
    if targets.is_empty() {
        return Err(ApiError::new(ErrorCode::NotFound, format!("{sid} has no active identity to revoke")));
    }
    // The service's account (TILLIT for a site's agents).
    let acct = e.account(&targets[0].account).map_err(ApiError::from)?;
    let users: Vec<String> = targets.iter().map(|t| t.user_public_key.clone()).collect();
    let until = targets.iter().map(|t| t.expires_at).max().unwrap_or(now);
    let signed = e.preview_revocation(&acct, &users, until).map_err(ApiError::from)?;
    let (b, records) = e.revocation_batch(&targets, &signed, now, req.reason.as_deref()).map_err(ApiError::from)?;
    let revoked: Vec<RevokedIdentity> =
        records.iter().map(|r| RevokedIdentity { user_public_key: r.user_public_key.clone(), cert_serial: r.cert_serial.clone() }).collect();
    let entry = Entry::ok(&caller.id, "revoke", &sid.to_string())
        .detail(serde_json::json!({ "reason": req.reason, "revoked": revoked.iter().map(|r| &r.user_public_key).collect::<Vec<_>>(),
            "serials": revoked.iter().map(|r| &r.cert_serial).collect::<Vec<_>>() }))
        .batch(b);
    // Recorded first (the record is the change; OCSP and the CRL answer from it at once), then
    // live: if nats-server cannot take it now, the reconciler pushes it until it does.
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    remember_account(ctx, signed.clone());
    if signed.callout_epochs != acct.callout_epochs {
        ctx.callout_gate.settle(ctx).await;
    }
    push_recorded(ctx, &signed, "revoke").await?;
    tracing::info!(service = %sid, count = revoked.len(), "revoked");
    let data = serde_json::json!({ "service": sid.to_string(), "users": users, "serials": revoked.iter().map(|r| &r.cert_serial).collect::<Vec<_>>() });
    if let Err(err) = ctx.events.publish(crate::subjects::EventKind::IdentityRevoked, None, &sid.to_string(), &data, now).await {
        tracing::error!(service = %sid, "cannot publish identity.revoked: {err}");
    }
    Ok(RevokeReply { service: sid.clone(), revoked, revoked_at: rfc3339(now) })
}

/// Callout mode: replace the answer keys of `users`' buckets in account `account`, record and
/// push ([`crate::estate::callout::CALLOUT_BUCKETS`]).
pub(super) async fn rotate_callout_answers(ctx: &Ctx, account: &str, users: &[String], why: &str) -> Result<(), ApiError> {
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let acct = e.account(account).map_err(ApiError::from)?;
    let (signed, b) = e.callout_rotation(&acct, users).map_err(ApiError::from)?;
    let buckets = crate::estate::callout::callout_buckets(users);
    ctx.journal
        .record(Entry::ok("tillit", "callout.rotate", account).detail(serde_json::json!({ "why": why, "buckets": buckets })).batch(b))
        .await
        .map_err(super::journal_error)?;
    ctx.callout_gate.settle(ctx).await;
    push_recorded(ctx, &signed, why).await
}

/// Push an account whose change is already recorded. When nats-server cannot take it now, the
/// change stands (it is in the store and the audit log) and the reconciler pushes it within
/// `nats.reconcile_interval`; the caller is told it is not live yet.
pub(super) async fn push_recorded(ctx: &Ctx, acct: &crate::estate::AccountRecord, why: &str) -> Result<(), ApiError> {
    push(ctx, acct, why).await.map_err(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "the change is recorded, but nats-server did not take it yet; tillit pushes it again until it does (check the hub)",
        )
    })
}

/// The state of an identity as shown to operators (pure).
pub(super) fn state_of(rec: &IdentityRecord, now: i64) -> IdentityStatus {
    match rec.state {
        IdentityState::Revoked => IdentityStatus::Revoked,
        IdentityState::Active if rec.expires_at <= now => IdentityStatus::Expired,
        IdentityState::Active => IdentityStatus::Active,
    }
}

/// Whether an admin with `access` sees identity `r` (a confined admin sees its tenants' services
/// only: not admins, not site agents).
pub(super) fn sees_identity(access: &Access, r: &IdentityRecord) -> bool {
    !access.confined() || (r.kind == IdentityKind::Service && r.service.as_ref().is_some_and(|s| access.sees(&s.tenant)))
}

async fn list(ctx: &Ctx, call: &mut super::dispatch::Call, req: ListRequest) -> Result<ListReply, ApiError> {
    let access = call.access()?;
    let now = ctx.estate.clock().now_unix();
    // Sorted by SPIFFE id then user key, the cursor key sorting as the list does (ids hold no
    // space, below every character they do). From the order index: the page's records from its
    // cursor on, and one more to know whether another page follows; in an estate whose index
    // is not built yet, one pass over every record holding only the page.
    let mut pager = super::paging::Pager::new(req.limit, req.after.as_deref())?;
    let offer = |r: IdentityRecord, pager: &mut super::paging::Pager<IdentityEntry>| {
        if sees_identity(access, &r) {
            pager.offer(
                crate::estate::list_key(&r),
                IdentityEntry {
                    state: state_of(&r, now),
                    expires_at: rfc3339(r.expires_at),
                    revoked_at: r.revoked_at.map(rfc3339),
                    id: r.id,
                    kind: r.kind,
                    service: r.service,
                    user_public_key: r.user_public_key,
                    cert_serial: r.cert_serial,
                },
            );
        }
    };
    let after = pager.after().map(str::to_string);
    let indexed = ctx
        .estate
        .visit_identities_in_order(after.as_deref(), |r| {
            offer(r, &mut pager);
            !pager.full()
        })
        .map_err(ApiError::from)?;
    if !indexed {
        ctx.estate
            .visit_identities(|r| {
                offer(r, &mut pager);
                true
            })
            .map_err(ApiError::from)?;
    }
    let (identities, next) = pager.finish();
    Ok(ListReply { identities, next })
}

// === token create ===

async fn token_create(ctx: &Ctx, caller: &IdentityRecord, req: TokenCreateRequest) -> Result<TokenCreateReply, ApiError> {
    check_ttl(req.ttl_secs)?;
    if !(1..=MAX_TOKENS_PER_REQUEST).contains(&req.count) {
        return Err(ApiError::bad_request(format!("count must be between 1 and {MAX_TOKENS_PER_REQUEST}")));
    }
    match crate::names::agent_site(&req.identity) {
        Some(site) if ctx.estate.site(site).map_err(ApiError::from)?.is_none() => {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no site {site}; add it first with `tillit site add`")));
        }
        Some(_) => {}
        // A token for a new admin identity: an owner (`tillit admin add` names a role).
        None if crate::names::admin_name(&req.identity).is_some() => {}
        None if req.identity.tenant == crate::names::AGENT_TENANT => {
            return Err(ApiError::bad_request(format!(
                "tenant {:?} is reserved for tillit itself; pick another tenant name",
                crate::names::AGENT_TENANT
            )));
        }
        None => {}
    }
    let admin = crate::names::admin_name(&req.identity).map(|_| Access::owner());
    let detail = serde_json::json!({ "count": req.count });
    let target = req.identity.to_string();
    let reply = mint(ctx, caller, req.identity, req.ttl_secs, req.count, admin, "token.create", &target, detail).await?;
    tracing::info!(identity = %target, count = req.count, by = %caller.id, "join tokens created");
    Ok(reply)
}

/// A join token's lifetime must be 60 s to [`MAX_TOKEN_TTL_SECS`].
fn check_ttl(ttl_secs: i64) -> Result<(), ApiError> {
    if !(60..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
        return Err(ApiError::bad_request(format!("ttl must be between 60s and {}s", MAX_TOKEN_TTL_SECS)));
    }
    Ok(())
}

/// Mint `count` join tokens for `sid` (lifetime checked by [`check_ttl`]; a new admin's carry `admin`), record them with their
/// audit entry (`action` on `target`, `detail` plus their expiry and ids), and the reply.
#[allow(clippy::too_many_arguments)]
async fn mint(
    ctx: &Ctx,
    caller: &IdentityRecord,
    sid: ServiceId,
    ttl_secs: i64,
    count: u32,
    admin: Option<Access>,
    action: &str,
    target: &str,
    mut detail: serde_json::Value,
) -> Result<TokenCreateReply, ApiError> {
    let estate = ctx.estate.clone();
    let by = caller.id.clone();
    let for_sid = sid.clone();
    let (tokens, batch) = tokio::task::spawn_blocking(move || estate.create_tokens(&for_sid, ttl_secs, count, &by, admin.as_ref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    let expires = tokens.first().map(|t| t.expires_at).unwrap_or_default();
    detail["expires_at"] = serde_json::json!(expires);
    detail["token_ids"] = serde_json::json!(tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>());
    ctx.journal.record(Entry::ok(&caller.id, action, target).detail(detail).batch(batch)).await.map_err(super::journal_error)?;
    Ok(TokenCreateReply {
        tokens: tokens.iter().map(|t| t.encode().expose().to_string()).collect(),
        identity: sid,
        expires_at: rfc3339(expires),
        expires_at_unix: expires,
    })
}

// === admins ===

/// `admins.add`: a join token for a new admin with a role (and tenants, for operators and auditors).
async fn admin_add(ctx: &Ctx, caller: &IdentityRecord, req: AdminAddRequest) -> Result<TokenCreateReply, ApiError> {
    let identity = crate::names::admin_service_id(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if req.role == AdminRole::Owner && !req.tenants.is_empty() {
        return Err(ApiError::bad_request("owners are never confined to tenants; give --tenant to operators and auditors"));
    }
    if req.tenants.len() > crate::proto::MAX_ADMIN_TENANTS {
        return Err(ApiError::new(ErrorCode::LimitExceeded, format!("at most {} tenants per admin", crate::proto::MAX_ADMIN_TENANTS)));
    }
    let mut tenants = req.tenants.clone();
    for t in &tenants {
        crate::names::check_segment("tenant", t).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if t == crate::names::AGENT_TENANT {
            return Err(ApiError::bad_request(format!("tenant {t:?} is tillit's own; confine admins to tenants of services")));
        }
    }
    tenants.sort();
    tenants.dedup();
    check_ttl(req.ttl_secs)?;
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    // One name, one role: a new token for a live admin's name must not change what it may do.
    if let Some(live) = e.identities().map_err(ApiError::from)?.into_iter().find(|i| {
        i.kind == IdentityKind::Admin && i.name == req.name && i.state == IdentityState::Active && i.expires_at > now
    }) {
        let a = live.access();
        if a.role != req.role || a.tenants != tenants {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("admin {} is live as {}; revoke it first to give the name another role or tenants", req.name, a.role),
            ));
        }
    }
    let access = Access { role: req.role, tenants: tenants.clone() };
    let detail = serde_json::json!({ "role": req.role, "tenants": tenants });
    let reply = mint(ctx, caller, identity, req.ttl_secs, 1, Some(access), "admins.add", &req.name, detail).await?;
    tracing::info!(admin = %req.name, role = %req.role, by = %caller.id, "admin join token created");
    Ok(reply)
}

/// `admins.list`: every admin name with its role, tenants and live identities.
async fn admin_list(ctx: &Ctx, _req: AdminListRequest) -> Result<AdminListReply, ApiError> {
    let now = ctx.estate.clock().now_unix();
    let mut by_name: std::collections::BTreeMap<String, Vec<IdentityRecord>> = Default::default();
    for i in ctx.estate.identities().map_err(ApiError::from)?.into_iter().filter(|i| i.kind == IdentityKind::Admin) {
        by_name.entry(i.name.clone()).or_default().push(i);
    }
    let admins = by_name
        .into_iter()
        .map(|(name, ids)| {
            let live: Vec<&IdentityRecord> = ids.iter().filter(|i| state_of(i, now) == IdentityStatus::Active).collect();
            // The newest identity says the role (all of a live name's agree: `admins.add` sees to it).
            let newest = live.iter().copied().max_by_key(|i| i.issued_at).or_else(|| ids.iter().max_by_key(|i| i.issued_at));
            let (access, state, expires) = match newest {
                Some(n) => (n.access(), state_of(n, now), n.expires_at),
                None => (Access::owner(), IdentityStatus::Expired, 0),
            };
            AdminInfo { name, role: access.role, tenants: access.tenants, state, active_identities: live.len(), expires_at: rfc3339(expires) }
        })
        .collect();
    Ok(AdminListReply { admins })
}

/// The meta flag naming the default permissions every role was last given
/// ([`defaults_fingerprint`]).
const ROLE_DEFAULTS_FLAG: &str = "role_defaults";

/// What the default permissions are, for any service: a digest of the template made for a
/// placeholder service. A release that changes the defaults changes it.
fn defaults_fingerprint() -> String {
    let probe = ServiceId::new("tenant", "project", "env", "service").map(|sid| serde_json::to_vec(&default_permissions(&sid)).unwrap_or_default()).unwrap_or_default();
    crate::crypto::sha256_hex(&probe)
}

/// Roles from before a default permission existed get it, in place (same key: the template
/// changes, the service's connections carry on): at start, by the leader, once per change of
/// the defaults (a pass over every role: 0.9 s at 100,000 services; roles made since carry
/// the defaults they were made with).
pub(super) async fn add_missing_defaults(ctx: &Ctx) {
    let e = &ctx.estate;
    let want = defaults_fingerprint();
    if e.meta_flag::<String>(ROLE_DEFAULTS_FLAG).ok().flatten().as_deref() == Some(want.as_str()) {
        return;
    }
    let mut failed = false;
    // One streaming pass holding only the roles that lack something (at start: an estate of
    // 100,000 services has as many roles).
    let mut upgrades = vec![];
    if let Err(err) = e.visit_roles(|role| {
        let d = default_permissions(&role.service);
        let mut next = role.clone();
        let mut added: Vec<String> = vec![];
        for (have, want) in [(&mut next.permissions.publish.allow, &d.publish.allow), (&mut next.permissions.subscribe.allow, &d.subscribe.allow)] {
            for s in want {
                if !have.contains(s) {
                    have.push(s.clone());
                    added.push(s.clone());
                }
            }
        }
        if next.permissions.resp.is_none() && d.resp.is_some() {
            next.permissions.resp = d.resp.clone();
            added.push("responses".into());
        }
        if !added.is_empty() {
            upgrades.push((role, next, added));
        }
        true
    }) {
        tracing::error!("cannot read the roles to give them their default permissions: {err}");
        failed = true;
    }
    for (role, next, added) in upgrades {
        let _g = e.account_lock().lock().await;
        let result = async {
            let acct = e.account(&role.account).map_err(ApiError::from)?;
            let signed = e.preview_role_change(&acct, &next).map_err(ApiError::from)?;
            let b = e.role_batch(&next, &signed, &[]).map_err(ApiError::from)?;
            ctx.journal
                .record(Entry::ok("tillit", "role.upgrade", &role.service.to_string()).detail(serde_json::json!({ "added": added })).batch(b))
                .await
                .map_err(super::journal_error)?;
            remember(ctx, signed.clone(), next.clone());
            push_recorded(ctx, &signed, "role.upgrade").await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(service = %role.service, added = added.len(), "role given the default permissions it lacked"),
            Err(err) => {
                failed = true;
                tracing::error!(service = %role.service, "cannot give the role its default permissions: {}", err.message)
            }
        }
    }
    // Once every role has them, the next start skips the pass (a failure: it tries again).
    if !failed {
        if let Err(err) = e.set_meta_flag(ROLE_DEFAULTS_FLAG, &want) {
            tracing::warn!("cannot note that every role has the default permissions (the next start checks them again): {err}");
        }
    }
}
