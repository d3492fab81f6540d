//! CA rotation, driven by the control plane (see [`crate::estate::ca`] for the three steps):
//! `rotate ca` adds the next CA to the bundle, rewrites the hub's trust file and reloads the hub,
//! and broadcasts `ca.rotated`; a background tick switches issuance once every site's agents
//! applied that event, and later retires the old CA once its last certificate expired (after
//! re-issuing the hub's server certificate from the new CA).

use super::dispatch::{Call, Handle};
use super::Ctx;
use std::sync::Arc;
use crate::audit::Entry;
use crate::clock::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::estate::ca::{CaState, RolloutRecord};
use crate::estate::{Estate, IdentityRecord};
use crate::proto::{self, CaEventPhase, CaStatus, RotatePhase, CaInfo, CaRollout, RotateCaReply, RotateCaRequest};
use std::time::Duration;

// === verbs ===

impl Handle for proto::RotateCa {
    async fn handle(ctx: &Arc<Ctx>, call: &mut Call, req: RotateCaRequest) -> Result<RotateCaReply, ApiError> {
        if req.finish {
            finish(ctx, call.caller()?).await
        } else {
            rotate(ctx, call.caller()?).await
        }
    }
}

serve_verbs! { RotateSigningKey(caller) => rotate_signing_key }

/// How often the rollout is checked.
pub(super) const ROLLOUT_TICK: Duration = Duration::from_secs(1);

fn state_str(s: CaState) -> CaStatus {
    match s {
        CaState::Current => CaStatus::Current,
        CaState::Next => CaStatus::Next,
        CaState::Previous => CaStatus::Previous,
        CaState::Retired => CaStatus::Retired,
    }
}

pub(super) fn ca_infos(e: &Estate) -> Vec<CaInfo> {
    e.ca_records()
        .iter()
        .map(|r| CaInfo {
            fingerprint: r.fingerprint.clone(),
            state: state_str(r.state),
            created_at: rfc3339(r.created_at),
            expires_at: crate::issuer::x509::not_after(&r.cert_pem).map(rfc3339).unwrap_or_default(),
            retire_at: r.retire_at.map(rfc3339),
        })
        .collect()
}

/// Sites whose agents have not all applied stream sequence `seq` (a site without agents has not).
async fn sites_pending(ctx: &Ctx, seq: u64) -> Result<Vec<String>, ApiError> {
    let e = &ctx.estate;
    let statuses = e.agent_statuses().map_err(ApiError::from)?;
    let mut pending = Vec::new();
    for s in e.sites().map_err(ApiError::from)? {
        let agents: Vec<_> = statuses.iter().filter(|a| a.site == s.name).collect();
        if agents.is_empty() || agents.iter().any(|a| a.last_seq < seq) {
            pending.push(s.name);
        }
    }
    Ok(pending)
}

pub(super) async fn rollout_info(ctx: &Ctx) -> Result<Option<CaRollout>, ApiError> {
    let Some(r) = ctx.estate.ca_rollout().map_err(ApiError::from)? else { return Ok(None) };
    Ok(Some(CaRollout { next: r.next.clone(), event_seq: r.event_seq, started_at: rfc3339(r.started_at), sites_pending: sites_pending(ctx, r.event_seq).await? }))
}

/// Write the hub's trust file (and, when given, its certificate and key) and ask the hub to
/// reload its configuration. The hub's files live in the data dir the control plane owns.
async fn update_hub(ctx: &Ctx, server_cert: Option<(&str, &str)>) -> Result<(), String> {
    let e = &ctx.estate;
    if let Some((cert, key)) = server_cert {
        crate::fsutil::write_atomic(&e.dir.nats_key(), key.as_bytes(), 0o600).map_err(|x| format!("hub key: {x}"))?;
        crate::fsutil::write_atomic(&e.dir.nats_cert(), cert.as_bytes(), 0o644).map_err(|x| format!("hub certificate: {x}"))?;
    }
    crate::fsutil::write_atomic(&e.dir.nats_ca(), e.server_ca_bundle_pem().as_bytes(), 0o644).map_err(|x| format!("hub CA bundle: {x}"))?;
    let id = ctx.sys.server_info().server_id;
    let subject = format!("$SYS.REQ.SERVER.{id}.RELOAD");
    let reply = tokio::time::timeout(Duration::from_secs(5), ctx.sys.request(subject, "".into()))
        .await
        .map_err(|_| "the hub did not answer the reload request".to_string())?
        .map_err(|x| format!("hub reload: {x}"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if let Some(err) = v.get("error") {
        if err.to_string().contains("TrustedOperators") {
            return Err(format!(
                "hub reload refused: its operator JWT changed on disk (a break-glass rotation) and nats-server reads it only at start; restart the hub's nats-server(s), then retry ({err})"
            ));
        }
        return Err(format!("hub reload refused: {err}"));
    }
    tracing::info!(server = %id, "hub reloaded its TLS files");
    Ok(())
}

/// Broadcast `ca.rotated` at `phase`, to every site or to one.
pub(super) async fn announce(ctx: &Ctx, site: Option<&str>, phase: CaEventPhase) -> Result<u64, ApiError> {
    let e = &ctx.estate;
    let data = serde_json::json!({
        "phase": phase,
        "bundle_pem": e.ca_bundle_pem(),
        "issuing": e.ca_fingerprint(),
        "cas": ca_infos(e),
    });
    ctx.events
        .publish(crate::subjects::EventKind::CaRotated, site, "ca.pem", &data, e.clock().now_unix())
        .await
        .map_err(|err| ApiError::new(ErrorCode::Unavailable, format!("cannot broadcast ca.rotated ({err}); retry `tillit rotate ca`")))
}

/// `tillit rotate ca`.
async fn rotate(ctx: &Ctx, caller: &IdentityRecord) -> Result<RotateCaReply, ApiError> {
    let e = &ctx.estate;
    let _g = ctx.ca_lock.lock().await;
    let (next, added) = e.next_ca()?;
    if let Some(b) = added {
        // The new CA exists only with its audit record: a refused write leaves no CA behind.
        ctx.journal
            .record(Entry::ok(&caller.id, "rotate.ca", &next.fingerprint).detail(serde_json::json!({ "phase": "prepared" })).batch(b))
            .await
            .map_err(super::journal_error)?;
        e.reload_caches();
    }
    update_hub(ctx, None).await.map_err(|m| ApiError::new(ErrorCode::Unavailable, format!("{m}; the new CA is in the bundle, retry `tillit rotate ca`")))?;
    let seq = announce(ctx, None, CaEventPhase::Added).await?;
    let rec = RolloutRecord { next: next.fingerprint.clone(), event_seq: seq, started_at: e.clock().now_unix() };
    e.set_ca_rollout(Some(&rec)).map_err(ApiError::from)?;
    ctx.journal
        .record(Entry::ok(&caller.id, "rotate.ca", &next.fingerprint).detail(serde_json::json!({ "phase": "added", "event_seq": seq })))
        .await
        .map_err(super::journal_error)?;
    tracing::info!(next = %next.fingerprint, event_seq = seq, "CA rotation started: new CA in the bundle, waiting for sites");
    let switched = advance(ctx).await?;
    Ok(RotateCaReply {
        phase: if switched { RotatePhase::Switched } else { RotatePhase::Distributing },
        cas: ca_infos(e),
        rollout: rollout_info(ctx).await?,
    })
}

/// Switch issuance when every site applied the bundle; true if it switched.
async fn advance(ctx: &Ctx) -> Result<bool, ApiError> {
    let e = &ctx.estate;
    let Some(r) = e.ca_rollout().map_err(ApiError::from)? else { return Ok(false) };
    if !sites_pending(ctx, r.event_seq).await?.is_empty() {
        return Ok(false);
    }
    let retire_at = e.last_issued_expiry().map_err(ApiError::from)?;
    let cur = e.switch_ca(retire_at).map_err(ApiError::from)?;
    e.set_ca_rollout(None).map_err(ApiError::from)?;
    // The hub already trusts both CAs (step 1); the set did not change, so no reload.
    let seq = announce(ctx, None, CaEventPhase::Switched).await?;
    ctx.journal.record_relaxed(Entry::ok("tillit", "rotate.ca", &cur.fingerprint).detail(serde_json::json!({
        "phase": "switched", "event_seq": seq, "previous_retire_at": retire_at,
    })));
    tracing::info!(current = %cur.fingerprint, old_retires = %rfc3339(retire_at), "CA rotation: issuance switched to the new CA");
    Ok(true)
}

/// Meta key: the CA whose `reissue` announcement went out (once per rotation).
const META_REISSUE: &str = "ca_reissue_announced";

/// Retire old CAs whose client certificates all expired. Server certificates move first: each
/// site's agent re-issues its server's (asked once with `ca.rotated` phase `reissue`), then the
/// hub's is re-issued here, and only then the old CA leaves the bundle everywhere.
async fn retire(ctx: &Ctx) -> Result<(), ApiError> {
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    let due = e.ca_records().iter().any(|r| r.retires_by(now));
    if !due {
        return Ok(());
    }
    let current = e.ca_fingerprint();
    let waiting: Vec<String> =
        e.sites().map_err(ApiError::from)?.into_iter().filter(|s| s.cert_ca.as_deref() != Some(current.as_str())).map(|s| s.name).collect();
    if !waiting.is_empty() {
        let asked: Option<String> = e.meta_flag(META_REISSUE).map_err(ApiError::from)?;
        if asked.as_deref() != Some(current.as_str()) {
            let seq = announce(ctx, None, CaEventPhase::Reissue).await?;
            e.set_meta_flag(META_REISSUE, &current).map_err(ApiError::from)?;
            ctx.journal.record_relaxed(Entry::ok("tillit", "rotate.ca", &current).detail(serde_json::json!({
                "phase": "reissue", "event_seq": seq, "sites": waiting,
            })));
            tracing::info!(sites = ?waiting, "CA rotation: asked the sites' agents to re-issue their servers' certificates");
        }
        return Ok(());
    }
    let hub = e.issue_server_cert().map_err(ApiError::from)?;
    let gone = e.retire_cas().map_err(ApiError::from)?;
    if let Err(m) = update_hub(ctx, Some((&hub.cert_pem, hub.key_pem.expose()))).await {
        tracing::error!("{m}");
    }
    let seq = announce(ctx, None, CaEventPhase::Retired).await?;
    ctx.journal.record_relaxed(Entry::ok("tillit", "rotate.ca", "retired").detail(serde_json::json!({ "phase": "retired", "retired": gone, "event_seq": seq })));
    tracing::info!(retired = ?gone, "CA rotation: old CA left the bundle");
    Ok(())
}

/// `tillit rotate ca --finish`: retire the previous CA now instead of after its last client
/// certificate expired (a compromised CA): the sites' and the hub's server certificates are
/// re-issued, then it leaves the bundle; clients still holding its certificates must renew.
async fn finish(ctx: &Ctx, caller: &IdentityRecord) -> Result<RotateCaReply, ApiError> {
    let e = &ctx.estate;
    let _g = ctx.ca_lock.lock().await;
    if e.ca_rollout().map_err(ApiError::from)?.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the new CA is still being distributed to sites (see `tillit status`); finish after issuance switched",
        ));
    }
    let moved = e.finish_ca_rotation().map_err(ApiError::from)?;
    if moved.is_empty() && !e.ca_records().iter().any(|r| r.state == CaState::Previous) {
        return Err(ApiError::new(ErrorCode::Conflict, "no CA rotation to finish: there is no previous CA"));
    }
    ctx.journal
        .record(Entry::ok(&caller.id, "rotate.ca", "finish").detail(serde_json::json!({ "phase": "finish", "previous": moved })))
        .await
        .map_err(super::journal_error)?;
    tracing::warn!(previous = ?moved, "CA rotation finished early by an admin: the previous CA retires as soon as the servers' certificates moved");
    // The control plane's own connections move to the current CA now; the next tick (a second
    // away) asks the sites and, once they moved, drops the old CA.
    ctx.renew_own.notify_waiters();
    Ok(RotateCaReply { phase: RotatePhase::Retiring, cas: ca_infos(e), rollout: rollout_info(ctx).await? })
}

/// One background step: advance a rollout, retire what is due.
pub(super) async fn tick(ctx: &Ctx) {
    let _g = ctx.ca_lock.lock().await;
    if let Err(err) = advance(ctx).await {
        tracing::warn!("CA rollout: {}", err.message);
    }
    if let Err(err) = retire(ctx).await {
        tracing::warn!("CA retirement: {}", err.message);
    }
}

/// Rotate the envelope signing key with overlap: add the next key to the trust set, broadcast
/// `trust.rotated` (signed by the current key, so every verifier can take the new set), switch,
/// and keep the old key verifying until `retire_after`.
async fn rotate_signing_key(ctx: &Ctx, caller: &IdentityRecord, req: crate::proto::RotateSigningKeyRequest) -> Result<crate::proto::RotateSigningKeyReply, ApiError> {
    if !(60..=30 * 86_400).contains(&req.retire_after_secs) {
        return Err(ApiError::bad_request("--retire-after must be between 60s and 30d"));
    }
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let next = e.add_next_envelope_key().map_err(ApiError::from)?;
    let jwks: serde_json::Value = serde_json::from_str(&e.trust_jwks()).map_err(ApiError::internal)?;
    let now = e.clock().now_unix();
    let data = serde_json::json!({ "trust_jwks": jwks, "next": next.kid });
    ctx.events
        .publish(crate::subjects::EventKind::TrustRotated, None, "trust.jwks", &data, now)
        .await
        .map_err(|err| ApiError::new(ErrorCode::Unavailable, format!("cannot broadcast the new trust set ({err}); nothing switched, retry")))?;
    ctx.journal
        .record(Entry::ok(&caller.id, "rotate.signing-key", &next.kid).detail(serde_json::json!({ "retire_after_secs": req.retire_after_secs })))
        .await
        .map_err(super::journal_error)?;
    let (current, previous, retire_at) = e.switch_envelope_key(req.retire_after_secs).map_err(ApiError::from)?;
    ctx.events.set_signer(e.envelope_signer().map_err(ApiError::from)?);
    tracing::info!(current = %current, previous = %previous, "envelope signing key rotated");
    Ok(crate::proto::RotateSigningKeyReply {
        current,
        previous,
        retire_at: rfc3339(retire_at),
        trust_jwks: serde_json::from_str(&e.trust_jwks()).map_err(ApiError::internal)?,
    })
}
