//! The auth callout responder (callout mode, `estate::callout`): every replica answers
//! `tillit.v1.callout.<account>` in one queue group on its TILLIT connection. Requests come
//! sealed to the callout xkey; answers go back sealed to the asking server's xkey.
//!
//! Live connections of a revoked identity (or of one whose permissions narrowed): the answer
//! key of its bucket is replaced in the account JWT (`Estate::callout_rotation`), and every
//! server that JWT reaches drops what the old key admitted.
//!
//! A rotation must not refuse a connection that is being admitted while it happens: the key
//! that signs next is listed in the account JWT long before it signs
//! (`Estate::callout_bucket_keys`), and the push that removes the old key waits for the
//! answers already signed with it to reach the server ([`AnswerGate`]).

use super::Ctx;
use crate::estate::callout::{AuthRequest, MAX_AUTH_REQUEST_BYTES};
use crate::subjects;
use crate::telemetry::ReasonLabels;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The queue group every replica's responder joins.
const QUEUE: &str = "tillit-callout";
/// Recent decision times kept for `status` (p50/p99).
const RECENT: usize = 2048;

/// Decisions this replica made: counts and recent times, for `status`.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    admitted: u64,
    refused: u64,
    recent: VecDeque<f64>,
}

impl Stats {
    fn record(&self, admitted: bool, seconds: f64) {
        if let Ok(mut s) = self.inner.lock() {
            if admitted {
                s.admitted += 1;
            } else {
                s.refused += 1;
            }
            if s.recent.len() >= RECENT {
                s.recent.pop_front();
            }
            s.recent.push_back(seconds);
        }
    }

    /// (admitted, refused, p50 ms, p99 ms) of this replica's decisions since it started.
    pub fn snapshot(&self) -> (u64, u64, f64, f64) {
        let Ok(s) = self.inner.lock() else { return (0, 0, 0.0, 0.0) };
        let mut v: Vec<f64> = s.recent.iter().copied().collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v.get(((v.len() as f64 - 1.0) * p).round().max(0.0) as usize).copied().unwrap_or(0.0) * 1000.0;
        (s.admitted, s.refused, q(0.5), q(0.99))
    }
}

/// Orders answers signed with an answer key before the push that removes that key: an answer
/// that reached nats-server after the push would name an issuer it no longer knows, and the
/// connection would be refused although the identity is live. Each answer is decided and
/// published under a shared hold; after a rotation is stored, [`AnswerGate::settle`] waits for
/// the answers decided before it and flushes them to the server, and only then is the new
/// account JWT pushed.
#[derive(Debug, Default)]
pub struct AnswerGate(tokio::sync::RwLock<()>);

impl AnswerGate {
    /// Held from reading the account to publishing the answer.
    async fn answering(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.0.read().await
    }

    /// Call after a rotation of answer keys is stored and before its push: every answer this
    /// replica signed with the old keys is then at nats-server. Other replicas learn of the
    /// rotation through the store a moment later: when there are any, the push also waits
    /// [`REPLICA_SETTLE`] for their answers.
    pub async fn settle(&self, ctx: &Ctx) {
        // Bounded: nats-server gives up on an answer after its auth timeout (3 s with TLS), and a
        // rotation must not wait on a connection that is down.
        match tokio::time::timeout(SETTLE_WAIT, self.0.write()).await {
            Ok(w) => drop(w),
            Err(_) => tracing::warn!("answers signed before an answer key rotation were still being sent after {SETTLE_WAIT:?}; pushing the rotation"),
        }
        match tokio::time::timeout(SETTLE_WAIT, ctx.api.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot flush the callout's answers before an answer key rotation: {e}"),
            Err(_) => tracing::warn!("the callout's answers were not flushed within {SETTLE_WAIT:?} before an answer key rotation"),
        }
        if ctx.leader.replicated() {
            tokio::time::sleep(REPLICA_SETTLE).await;
        }
    }
}

/// The longest a rotation's push waits for this replica's answers to be sent and flushed.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a rotation's push waits, in a replicated estate, for other replicas to see it and
/// for their answers signed with the old keys to arrive.
const REPLICA_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Answer authorization requests until the subscription ends (every replica, callout mode or
/// not: in JWT mode nothing asks).
pub(super) async fn run(ctx: Arc<Ctx>) {
    let mut sub = match ctx.api.queue_subscribe(subjects::CALLOUT_EXPORT, QUEUE.into()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot subscribe to {}: connections in callout mode cannot be decided here: {e}", subjects::CALLOUT_EXPORT);
            return;
        }
    };
    // The callout xkey, unsealed once (at the first request: in JWT mode it may not exist).
    let sealer: Arc<std::sync::OnceLock<crate::crypto::Sealer>> = Default::default();
    while let Some(msg) = sub.next().await {
        let (ctx, sealer) = (ctx.clone(), sealer.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let Some(reply) = msg.reply.clone() else { return };
            let hold = ctx.callout_gate.answering().await;
            match answer(&ctx, &sealer, &msg) {
                Ok((body, admitted, reason)) => {
                    let secs = start.elapsed().as_secs_f64();
                    ctx.metrics.callout_seconds.observe(secs);
                    ctx.metrics.callout_decisions.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
                    ctx.callout_stats.record(admitted, secs);
                    if let Err(e) = ctx.api.publish(reply, body.into()).await {
                        tracing::warn!("cannot answer an authorization request: {e}");
                    }
                    drop(hold);
                }
                Err(why) => {
                    // Nothing to answer with (no user key or server to address): nats-server
                    // times the connection out.
                    ctx.metrics.callout_decisions.get_or_create(&ReasonLabels { reason: "unanswerable".into() }).inc();
                    tracing::warn!(subject = %msg.subject, "authorization request not answered: {why}");
                }
            }
        });
    }
}

/// Decide one request: (the sealed or plain response, admitted?, reason label).
fn answer(ctx: &Ctx, sealer: &std::sync::OnceLock<crate::crypto::Sealer>, msg: &async_nats::Message) -> Result<(Vec<u8>, bool, &'static str), String> {
    let e = &ctx.estate;
    let account = msg.subject.as_str().strip_prefix("tillit.v1.callout.").filter(|a| !a.is_empty() && !a.contains('.')).ok_or("not a callout subject")?;
    if msg.payload.len() > MAX_AUTH_REQUEST_BYTES + 1024 {
        return Err("request too large".into());
    }
    let acct = e.account(account).map_err(|err| format!("account {account}: {err}"))?;
    let server_xkey = msg.headers.as_ref().and_then(|h| h.get("Nats-Server-Xkey")).map(|v| v.as_str().to_string());
    // Callout mode always sets an xkey on the account, so nats-server always seals: a plain
    // request did not come from a server of this estate.
    let server_xkey = server_xkey.ok_or("request not sealed (no Nats-Server-Xkey)")?;
    if nkeys::XKey::from_public_key(&server_xkey).is_err() || is_zero_xkey(&server_xkey) {
        return Err("the server's xkey is not a usable public xkey".into());
    }
    let sealer = match sealer.get() {
        Some(s) => s,
        None => {
            let s = crate::crypto::Sealer::new(&e.callout_xkey().map_err(|err| err.to_string())?).map_err(|err| err.to_string())?;
            sealer.get_or_init(|| s)
        }
    };
    let plain = sealer.open(&msg.payload, &server_xkey).map_err(|err| format!("cannot open the request: {err}"))?;
    let now = e.clock().now_unix();
    let req = AuthRequest::parse(&plain, &acct.public_key, now).map_err(|r| r.message)?;
    if req.nats.server_id.xkey != server_xkey {
        return Err("the request's server xkey differs from its header".into());
    }
    let decision = e.decide_connection(&acct, &req, now);
    let reason = match &decision {
        Ok(a) => {
            tracing::debug!(id = %a.id, account, client = req.nats.client_info.id, server = %req.nats.server_id.name, "connection admitted");
            "admitted"
        }
        Err(r) => {
            tracing::info!(account, reason = r.reason, host = %req.nats.client_info.host, "connection refused: {}", r.message);
            r.reason
        }
    };
    let jwt = e.callout_response(&acct, &req, &decision).map_err(|err| format!("cannot sign the answer: {err}"))?;
    let body = sealer.seal(jwt.as_bytes(), &server_xkey).map_err(|err| err.to_string())?;
    Ok((body, decision.is_ok(), reason))
}

fn is_zero_xkey(x: &str) -> bool {
    data_encoding::BASE32_NOPAD.decode(x.as_bytes()).ok().and_then(|r| r.get(1..33).map(|k| k.iter().all(|b| *b == 0))).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_give_quantiles() {
        let s = Stats::default();
        for i in 1..=100 {
            s.record(i % 10 != 0, i as f64 / 1000.0);
        }
        let (a, r, p50, p99) = s.snapshot();
        assert_eq!((a, r), (90, 10));
        assert!((p50 - 50.0).abs() <= 1.0, "{p50}");
        assert!((p99 - 99.0).abs() <= 1.0, "{p99}");
    }

    #[test]
    fn the_zero_xkey_is_refused() {
        let zero = {
            // An X-prefixed public xkey of 32 zero bytes with a valid checksum.
            let x = nkeys::XKey::new();
            let mut raw = data_encoding::BASE32_NOPAD.decode(x.public_key().as_bytes()).unwrap();
            for b in &mut raw[1..33] {
                *b = 0;
            }
            data_encoding::BASE32_NOPAD.encode(&raw)
        };
        assert!(is_zero_xkey(&zero));
        assert!(!is_zero_xkey(&nkeys::XKey::new().public_key()));
    }
}
