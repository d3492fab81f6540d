//! Publishing pre-signed OCSP answers into the `TILLIT_OCSP` bucket ([`crate::ocsp::copy`]).
//!
//! Every certificate tillit issued and that has not expired has one answer in the bucket, signed
//! ahead of time by the CA and valid until the certificate expires (at most
//! [`crate::ocsp::PRESIGN_MAX_SECS`]). Responders next to every nats-server answer from their
//! copy, so the data plane admits and refuses certificates while no `serve` runs.
//!
//! When an answer changes:
//! - a change committed by this replica that touches a serial, an identity's revocation or a
//!   site is published at once (the journal tells [`Touch`]es after each commit);
//! - the leader sweeps every serial every [`SWEEP_EVERY`]: answers another replica did not get
//!   to publish, answers that must be signed again before they run out, a used join token's
//!   bootstrap certificate once its grace is over, answers of certificates expired for an hour
//!   are deleted.
//!
//! Writes are compare-and-set on the revision last seen, and a `revoked` answer is never
//! replaced by a `good` one: an identity is never un-revoked, so a replica acting on an older
//! view cannot undo a revocation.

use super::Ctx;
use crate::estate::SerialRecord;
use crate::ocsp::copy::{Copy, Published};
use crate::ocsp::Status;
use crate::store::{Op, Space};
use async_nats::jetstream;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the leader compares every serial with its published answer.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Answers of certificates expired this long are deleted from the bucket.
const KEEP_EXPIRED_SECS: i64 = 3600;
/// How long a used join token's bootstrap certificate keeps its `good` answer.
const BOOTSTRAP_GRACE_SECS: i64 = 10;
/// The bucket's size limit.
const BUCKET_MAX_BYTES: i64 = 256 << 20;

/// What a committed change touched that may change an answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touch {
    /// A certificate was recorded (issued) or changed.
    Serial(String),
    /// An identity was revoked: every certificate of it.
    Identity(String),
    /// Anything else (a site removed or re-issued): sweep.
    All,
}

/// Which writes the journal reports ([`crate::audit::Observer::filter`]).
pub fn watched(op: &Op) -> bool {
    matches!(op.space, Space::Serials | Space::Identities | Space::Sites)
}

/// The touches of committed writes.
pub fn touches(seen: &[super::observed::Observed]) -> Vec<Touch> {
    let mut out = Vec::new();
    for w in seen {
        match w.op.space {
            Space::Serials => out.push(Touch::Serial(w.op.key.clone())),
            Space::Identities if w.revokes_identity() => out.push(Touch::Identity(w.op.key.clone())),
            Space::Sites => out.push(Touch::All),
            _ => {}
        }
    }
    out
}

/// The publisher: the bucket, this replica's copy of it, and what is waiting to be published.
pub struct Answers {
    kv: jetstream::kv::Store,
    pub copy: Arc<Copy>,
    tx: mpsc::UnboundedSender<Touch>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Touch>>>,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers").field("copy", &self.copy).finish_non_exhaustive()
    }
}

impl Answers {
    /// Find or create the bucket (`replicas` copies, as the store's).
    pub async fn open(client: async_nats::Client, copy: Arc<Copy>, replicas: usize) -> Result<Answers, String> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(crate::subjects::OCSP_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: crate::subjects::OCSP_BUCKET.into(),
                    description: "tillit: pre-signed OCSP answers by certificate serial".into(),
                    history: 1,
                    max_bytes: BUCKET_MAX_BYTES,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create the KV bucket {}: {e}", crate::subjects::OCSP_BUCKET))?,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Answers { kv, copy, tx, rx: Mutex::new(Some(rx)) })
    }

    /// Queue touches for publishing.
    pub fn touch(&self, t: Vec<Touch>) {
        for t in t {
            let _ = self.tx.send(t);
        }
    }

    /// The receiving end, once (for [`run`]).
    fn take_rx(&self) -> Option<mpsc::UnboundedReceiver<Touch>> {
        self.rx.lock().ok()?.take()
    }
}

/// Publish what is touched, as it comes (coalesced: one pass per burst).
pub async fn run(ctx: Arc<Ctx>) {
    let Some(mut rx) = ctx.answers.take_rx() else { return };
    // Everything once at start: answers of certificates issued before this version, and what
    // changed while no replica ran.
    sweep(&ctx).await;
    while let Some(first) = rx.recv().await {
        let mut batch = BTreeSet::from([first]);
        while let Ok(t) = rx.try_recv() {
            batch.insert(t);
        }
        if batch.contains(&Touch::All) {
            sweep(&ctx).await;
            continue;
        }
        let c = ctx.clone();
        let serials = tokio::task::spawn_blocking(move || serials_of(&c, batch)).await.unwrap_or_default();
        publish_all(&ctx, serials.into_iter().collect()).await;
    }
}

/// The serials the touches name (an identity's: every certificate it was issued).
fn serials_of(ctx: &Ctx, touches: BTreeSet<Touch>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut users = BTreeSet::new();
    for t in touches {
        match t {
            Touch::Serial(s) => {
                out.insert(s);
            }
            Touch::Identity(u) => {
                users.insert(u);
            }
            Touch::All => {}
        }
    }
    // Each revoked identity's certificates, from its own record; only records that do not list
    // them all leave their identities to one streaming pass over every serial.
    let now = ctx.estate.clock().now_unix();
    users.retain(|u| match ctx.estate.identity(u) {
        Ok(Some(rec)) => match rec.serials_to_revoke(now) {
            Some(serials) => {
                out.extend(serials);
                false
            }
            None => true,
        },
        _ => true,
    });
    if !users.is_empty() {
        // Streaming: the serials of those identities are held, not every serial.
        let visited = ctx.estate.store().visit_prefix(Space::Serials, "", &mut |serial, v| {
            if serde_json::from_slice::<SerialRecord>(v).is_ok_and(|rec| users.contains(&rec.user_public_key)) {
                out.insert(serial.to_string());
            }
            true
        });
        if let Err(e) = visited {
            tracing::warn!("cannot read the serials of revoked identities: {e}; the sweep publishes them");
        }
    }
    out
}

/// Compare every serial with its published answer; publish, re-sign or delete what differs.
pub async fn sweep(ctx: &Arc<Ctx>) {
    let c = ctx.clone();
    // One blocking pass decides; only the serials whose answer must change are published (each
    // decided again there, under its compare-and-set).
    let (total, serials): (usize, Vec<String>) = tokio::task::spawn_blocking(move || {
        // A streaming pass over the serials: what is held is the ones to publish, not every
        // serial of the estate.
        let now = c.estate.clock().now_unix();
        let store = c.estate.store();
        let mut total = 0usize;
        let mut out = BTreeSet::new();
        let visited = store.visit_prefix(Space::Serials, "", &mut |serial, v| {
            total += 1;
            let rec = serde_json::from_slice::<SerialRecord>(v).map_err(|e| format!("serials/{serial}: {e}"));
            if !matches!(rec.and_then(|r| decide(&c, serial, Some(r), now)), Ok(Some(None))) {
                out.insert(serial.to_string());
            }
            true
        });
        if let Err(e) = visited {
            tracing::warn!("OCSP sweep: cannot read the serials: {e}");
            return (0, vec![]);
        }
        // Answers whose record is gone.
        for serial in c.answers.copy.serials() {
            let publish = match store.get(Space::Serials, &serial) {
                Ok(Some(_)) => false, // visited above
                Ok(None) => !matches!(decide(&c, &serial, None, now), Ok(Some(None))),
                Err(_) => true,
            };
            if publish {
                total += 1;
                out.insert(serial);
            }
        }
        (total, out.into_iter().collect())
    })
    .await
    .unwrap_or_default();
    let changed = publish_all(ctx, serials).await;
    if changed > 0 {
        tracing::info!(changed, serials = total, "OCSP answers published");
    }
}

/// What the answer for `serial` should be now: `None` to delete it, `Some(None)` to leave it as
/// it is, `Some(Some((status, next_update)))` to sign one.
fn wanted(ctx: &Ctx, serial: &str, now: i64) -> Result<Option<Option<(Status, i64)>>, String> {
    let rec = crate::store::get_json::<SerialRecord>(ctx.estate.store(), Space::Serials, serial).map_err(|x| x.to_string())?;
    decide(ctx, serial, rec, now)
}

/// [`wanted`], given the serial's record (`None`: there is none).
fn decide(ctx: &Ctx, serial: &str, rec: Option<SerialRecord>, now: i64) -> Result<Option<Option<(Status, i64)>>, String> {
    let e = &ctx.estate;
    let held = ctx.answers.copy.get(serial);
    let Some(rec) = rec else {
        // Not ours (any more): no answer.
        return Ok(if held.is_some() { None } else { Some(None) });
    };
    if rec.not_after <= now {
        return Ok(if held.is_some() && rec.not_after < now - KEEP_EXPIRED_SECS { None } else { Some(None) });
    }
    let status = e.serial_status(&rec).map_err(|x| x.to_string())?;
    // A used join token's bootstrap certificate stays `good` a little longer: its enrollee may
    // send the same request again to read a lost reply (its user JWT is revoked after a grace
    // too). The sweep publishes `revoked` after that.
    if let (Some(_), Status::Revoked(at)) = (&rec.token, status) {
        if now - at < BOOTSTRAP_GRACE_SECS {
            return Ok(Some(None));
        }
    }
    let next = rec.not_after.min(now + crate::ocsp::PRESIGN_MAX_SECS);
    if let Some(h) = held {
        let same = match (h.status(), status) {
            (Status::Revoked(_), _) => true, // never back to good
            (a, b) => a == b,
        };
        let lasts = h.next_update() >= rec.not_after || h.next_update() - now > crate::ocsp::PRESIGN_MAX_SECS / 2;
        if same && lasts {
            return Ok(Some(None));
        }
        if matches!(h.status(), Status::Revoked(_)) {
            // Revoked, but running out: sign `revoked` again.
            return Ok(Some(Some((h.status(), next))));
        }
    }
    Ok(Some(Some((status, next))))
}

/// What the bucket's answer for a serial is to become.
enum Plan {
    /// It is what it should be.
    Keep,
    /// No answer (the certificate is not ours, or expired long ago).
    Delete,
    /// This answer (signed, as the bucket holds it), its status and `nextUpdate`.
    Put(Vec<u8>, Status, i64),
}

/// Decide `serial`'s answer now and sign it if it changes (blocking: reads the store, signs).
fn plan(ctx: &Ctx, serial: &str, now: i64) -> Result<Plan, String> {
    Ok(match wanted(ctx, serial, now)? {
        Some(None) => Plan::Keep,
        None => Plan::Delete,
        Some(Some((status, next))) => {
            let cas: Vec<_> = ctx.estate.trusted_cas().into_iter().map(|(_, c)| c).collect();
            let ders = crate::ocsp::presign(&cas, serial, status, now - crate::ocsp::PRESIGN_BACKDATE_SECS, next);
            if ders.is_empty() {
                return Err("signing failed".into());
            }
            Plan::Put(Published::new(&ders).to_bytes(), status, next)
        }
    })
}

/// Write `plan` over the answer this replica last saw: `Ok(true)` if it wrote, `Err` if the
/// bucket refused (someone wrote first, or the copy is behind).
async fn write(ctx: &Ctx, serial: &str, plan: Plan) -> Result<bool, String> {
    let a = &ctx.answers;
    let held = a.copy.get(serial);
    match plan {
        Plan::Keep => Ok(false),
        Plan::Delete => {
            let rev = held.map(|h| h.revision).unwrap_or(0);
            a.kv.delete_expect_revision(serial, Some(rev)).await.map_err(|e| e.to_string())?;
            a.copy.forget(serial);
            Ok(true)
        }
        Plan::Put(value, status, next) => {
            let rev = match &held {
                Some(h) => a.kv.update(serial, value.clone().into(), h.revision).await.map_err(|e| e.to_string())?,
                None => a.kv.create(serial, value.clone().into()).await.map_err(|e| e.to_string())?,
            };
            a.copy.note_signed(rev, serial, &value, status, next);
            Ok(true)
        }
    }
}

/// Serials decided and signed in one blocking pass.
const PUBLISH_CHUNK: usize = 256;
/// Answers written at once (each waits for the bucket's acknowledgement).
const PUBLISH_IN_FLIGHT: usize = 32;

/// Publish the answers of `serials`: each chunk decided and signed in one blocking pass, then
/// written concurrently; a serial whose write the bucket refuses goes through [`publish`] (read
/// again, decided again). How many answers changed; failures are logged (the next sweep tries
/// them again).
pub async fn publish_all(ctx: &Arc<Ctx>, serials: Vec<String>) -> usize {
    use futures::StreamExt;
    let mut changed = 0;
    for chunk in serials.chunks(PUBLISH_CHUNK) {
        let (c, chunk) = (ctx.clone(), chunk.to_vec());
        let plans = match tokio::task::spawn_blocking(move || {
            let now = c.estate.clock().now_unix();
            chunk.into_iter().map(|s| { let p = plan(&c, &s, now); (s, p) }).collect::<Vec<_>>()
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot decide OCSP answers: {e}; the next sweep tries again");
                continue;
            }
        };
        let written: Vec<(String, Result<bool, String>)> = futures::stream::iter(plans)
            .map(|(serial, p)| async move {
                let r = match p {
                    Ok(p) => match write(ctx, &serial, p).await {
                        Ok(w) => Ok(w),
                        Err(e) => {
                            tracing::debug!(serial, "OCSP answer write refused ({e}); reading it again");
                            match reread(ctx, &serial).await {
                                Ok(()) => publish(ctx, &serial).await,
                                Err(e) => Err(e),
                            }
                        }
                    },
                    Err(e) => Err(e),
                };
                (serial, r)
            })
            .buffer_unordered(PUBLISH_IN_FLIGHT)
            .collect()
            .await;
        for (serial, r) in written {
            match r {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(serial, "cannot publish the OCSP answer: {e}; the next sweep tries again"),
            }
        }
    }
    changed
}

/// Make the bucket's answer for `serial` what it should be; true if it wrote.
pub async fn publish(ctx: &Arc<Ctx>, serial: &str) -> Result<bool, String> {
    for _ in 0..3 {
        let now = ctx.estate.clock().now_unix();
        let c = ctx.clone();
        let s = serial.to_string();
        let p = tokio::task::spawn_blocking(move || plan(&c, &s, now)).await.map_err(|e| e.to_string())??;
        match write(ctx, serial, p).await {
            Ok(w) => return Ok(w),
            Err(e) => {
                // Someone wrote first (or the copy is behind): read what is there and decide again.
                tracing::debug!(serial, "OCSP answer write refused ({e}); reading it again");
                reread(ctx, serial).await?;
            }
        }
    }
    Err("the answer kept changing under this replica".into())
}

/// Bring this replica's copy of `serial`'s answer up to what the bucket holds.
async fn reread(ctx: &Ctx, serial: &str) -> Result<(), String> {
    let a = &ctx.answers;
    match a.kv.entry(serial).await {
        Ok(Some(entry)) if entry.operation == jetstream::kv::Operation::Put => a.copy.note(entry.revision, serial, Some(&entry.value)),
        Ok(_) => a.copy.forget(serial),
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}
