//! Caller key sets (issue 18): every service's live instance keys, published into a KV bucket
//! ([`crate::service::CALLERS_BUCKET`]) in the service's own tenant account, key
//! `<project>.<service>`, value a [`KeySetDoc`]. Services watch their account's bucket
//! ([`crate::service::Callers::follow`]): they see only their tenant-environment's callers, get
//! a revocation as soon as it commits, and keep verifying with `serve` down (the bucket lives in
//! nats-server's JetStream).
//!
//! Written on every committed identity change of a service (the journal's observer), and swept
//! by the leader (expired keys leave, a replica's missed publish is made good).

use super::Ctx;
use crate::estate::{IdentityRecord, IdentityState};
use crate::identity::IdentityKind;
use crate::issuer::jwt::UserPermissions;
use crate::names::ServiceId;
use crate::service::{KeySetDoc, CALLERS_BUCKET};
use crate::store::{Op, Space};
use async_nats::jetstream;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The least time between two rounds of publishing (a new key or a revocation waits at most
/// this long before its set is sent).
const PUBLISH_SPACING: std::time::Duration = std::time::Duration::from_millis(200);
/// How often the leader publishes every service's set again.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The publisher: services to publish, and one connection per tenant account.
pub struct Publisher {
    tx: mpsc::UnboundedSender<ServiceId>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<ServiceId>>>,
    /// Per account: its bucket, and when the connection's credentials need replacing.
    buckets: tokio::sync::Mutex<HashMap<String, (jetstream::kv::Store, i64)>>,
    /// What was last published per key (`<account>/<project>.<service>`): unchanged sets are
    /// not sent again. Digests (SHA-256, first 128 bits) of the key and of the set, not the set:
    /// one entry per service of the estate.
    last: Mutex<HashMap<[u8; 16], [u8; 16]>>,
}

impl Default for Publisher {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Publisher { tx, rx: Mutex::new(Some(rx)), buckets: Default::default(), last: Default::default() }
    }
}

/// Whether a committed write concerns a service's keys.
pub fn watched(op: &Op) -> bool {
    op.space == Space::Identities
}

impl Publisher {
    /// Note the services whose identities these committed writes changed.
    pub fn touch(&self, seen: &[super::observed::Observed]) {
        for i in seen.iter().filter_map(|w| w.identity.as_ref()) {
            if let (Some(IdentityKind::Service), Some(sid)) = (i.kind, &i.service) {
                let _ = self.tx.send(sid.clone());
            }
        }
    }
}

/// A service's key set now (pure): its live instances' keys, valid until they expire; keys
/// revoked and not yet expired.
pub fn key_set(trust_domain: &str, sid: &ServiceId, ids: &[IdentityRecord], now: i64) -> KeySetDoc {
    let mut keys = vec![];
    let mut revoked = BTreeSet::new();
    let mut sorted: Vec<&IdentityRecord> = ids.iter().filter(|i| i.service.as_ref() == Some(sid) && i.expires_at > now).collect();
    sorted.sort_by(|a, b| a.user_public_key.cmp(&b.user_public_key));
    for i in sorted {
        match i.state {
            IdentityState::Active => keys.extend(KeySetDoc::jwk(&i.user_public_key, i.expires_at)),
            IdentityState::Revoked => {
                revoked.insert(i.user_public_key.clone());
            }
        }
    }
    KeySetDoc { iss: sid.spiffe_id(trust_domain), keys, revoked: revoked.into_iter().collect() }
}

/// What the control plane's user in a tenant account may do: the bucket's JetStream API and its
/// subjects, its own inbox.
fn writer_permissions() -> UserPermissions {
    let b = format!("KV_{CALLERS_BUCKET}");
    UserPermissions::new(
        vec![format!("$JS.API.STREAM.CREATE.{b}"), format!("$JS.API.STREAM.INFO.{b}"), format!("$JS.API.STREAM.UPDATE.{b}"), format!("$KV.{CALLERS_BUCKET}.>"), "$JS.API.INFO".into()],
        vec![format!("{}.>", crate::subjects::INBOX_ROOT)],
    )
}

async fn bucket(ctx: &Ctx, account: &str) -> Result<jetstream::kv::Store, String> {
    let now = ctx.estate.clock().now_unix();
    let pub_ = &ctx.callers;
    let mut m = pub_.buckets.lock().await;
    if let Some((kv, renew_at)) = m.get(account) {
        if *renew_at > now {
            return Ok(kv.clone());
        }
    }
    let (params, _ck, expires_at) = super::own::params_for(&ctx.estate, account, writer_permissions()).map_err(|e| e.to_string())?;
    let client = tokio::time::timeout(std::time::Duration::from_secs(10), crate::client::connect(&params))
        .await
        .map_err(|_| format!("connecting to account {account} timed out"))?
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let kv = match js.get_key_value(CALLERS_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(jetstream::kv::Config {
                bucket: CALLERS_BUCKET.into(),
                description: "tillit: the live instance keys of this account's services (caller tokens)".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: ctx.estate.config.store.replicas().max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("bucket {CALLERS_BUCKET} in {account}: {e}"))?,
    };
    let renew_at = now + (expires_at - now) / 2;
    m.insert(account.to_string(), (kv.clone(), renew_at));
    Ok(kv)
}

/// The first 128 bits of `bytes`' SHA-256.
fn digest16(bytes: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Publish one service's set (unless it is what was published last).
async fn publish(ctx: &Ctx, sid: &ServiceId, ids: &[IdentityRecord]) -> Result<(), String> {
    let now = ctx.estate.clock().now_unix();
    let doc = key_set(ctx.estate.trust_domain(), sid, ids, now);
    let account = sid.account_name();
    let key = format!("{}.{}", sid.project, sid.service);
    let body = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    let memo = digest16(format!("{account}/{key}").as_bytes());
    let digest = digest16(body.as_bytes());
    if ctx.callers.last.lock().map(|m| m.get(&memo) == Some(&digest)).unwrap_or(false) {
        return Ok(());
    }
    let kv = bucket(ctx, &account).await?;
    let put = if doc.keys.is_empty() && doc.revoked.is_empty() { kv.delete(&key).await.map(|_| ()).map_err(|e| e.to_string()) } else { kv.put(&key, body.clone().into()).await.map(|_| ()).map_err(|e| e.to_string()) };
    match put {
        Ok(()) => {
            if let Ok(mut m) = ctx.callers.last.lock() {
                m.insert(memo, digest);
            }
            Ok(())
        }
        Err(e) => {
            // The connection may be gone: the next attempt makes a new one.
            ctx.callers.buckets.lock().await.remove(&account);
            Err(format!("{sid}: {e}"))
        }
    }
}

/// Publish what is touched, as it comes (coalesced: one pass per burst).
pub async fn run(ctx: Arc<Ctx>) {
    let Some(mut rx) = ctx.callers.rx.lock().ok().and_then(|mut r| r.take()) else { return };
    let mut last_round: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        // Rounds at most every PUBLISH_SPACING: a set is the whole service's, so a burst of
        // enrollments of one service is published once, not once per instance.
        if let Some(t) = last_round {
            tokio::time::sleep_until(t + PUBLISH_SPACING).await;
        }
        last_round = Some(tokio::time::Instant::now());
        let mut todo = BTreeSet::from([first]);
        while let Ok(more) = rx.try_recv() {
            todo.insert(more);
        }
        for sid in todo {
            publish_from_index(&ctx, &sid, false, "; the sweep tries again").await;
        }
    }
}

/// Publish `sid`'s set from that service's own identities (the index), not the estate's;
/// `only_services`: not for a name none of whose identities is a service's. A failure is
/// logged, with `then` (what happens next).
async fn publish_from_index(ctx: &Arc<Ctx>, sid: &ServiceId, only_services: bool, then: &str) {
    let ids = match ctx.estate.identities_of(sid) {
        Ok(ids) => ids,
        Err(e) => return tracing::warn!(service = %sid, "cannot read the identities of the service: {e}{then}"),
    };
    if only_services && !ids.iter().any(|i| i.kind == IdentityKind::Service) {
        return;
    }
    if let Err(e) = publish(ctx, sid, &ids).await {
        tracing::warn!("cannot publish the caller keys of {e}{then}");
    }
}

/// Publish every service's set (the leader, every [`SWEEP_EVERY`]).
///
/// One service at a time, each from its own identities (the index), the services' names read a
/// page at a time: the sweep holds one page of names and one service's identities, and its work
/// is linear in the estate (it was every identity times every service).
pub async fn sweep(ctx: &Arc<Ctx>) {
    let mut after: Option<ServiceId> = None;
    loop {
        let (c, from) = (ctx.clone(), after.take());
        let page = match tokio::task::spawn_blocking(move || c.estate.services_page(from.as_ref(), SWEEP_PAGE)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::warn!("caller keys: cannot list the services: {e}"),
            Err(e) => return tracing::warn!("caller keys: {e}"),
        };
        let Some(last) = page.last().cloned() else { return };
        for sid in page {
            publish_from_index(ctx, &sid, true, "").await;
        }
        after = Some(last);
    }
}

/// Services whose names the sweep reads at a time.
const SWEEP_PAGE: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_holds_live_keys_and_revoked_ones_until_they_expire() {
        let sid = ServiceId::parse("acme/shop/prod/orders").unwrap();
        let other = ServiceId::parse("acme/shop/prod/billing").unwrap();
        let rec = |svc: &ServiceId, state: IdentityState, exp: i64| {
            let kp = nkeys::KeyPair::new_user();
            let mut r = IdentityRecord::admin("x", "x", &kp.public_key(), "", 0, exp);
            r.kind = IdentityKind::Service;
            r.service = Some(svc.clone());
            r.state = state;
            r
        };
        let ids = vec![
            rec(&sid, IdentityState::Active, 200),
            rec(&sid, IdentityState::Active, 50),
            rec(&sid, IdentityState::Revoked, 200),
            rec(&sid, IdentityState::Revoked, 50),
            rec(&other, IdentityState::Active, 200),
        ];
        let doc = key_set("example.org", &sid, &ids, 100);
        assert_eq!(doc.iss, "spiffe://example.org/acme/shop/prod/orders");
        assert_eq!(doc.keys.len(), 1, "the live one; the expired one is gone");
        assert_eq!(doc.keys[0]["kid"], ids[0].user_public_key.as_str());
        assert_eq!(doc.revoked, vec![ids[2].user_public_key.clone()]);
        assert_eq!(doc.key_set().len(), 1);
    }
}
