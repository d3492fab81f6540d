//! Break-glass connections, seen once tillit is back.
//!
//! A break-glass bundle is used when `serve` is broken, so `serve` cannot be the one watching
//! for it live. nats-server is: the SYS account exports its connect events
//! (`$SYS.ACCOUNT.<SYS>.CONNECT`) as a stream, the TILLIT account imports them as
//! [`subjects::SYS_CONNECT_EVENTS`], and the JetStream stream [`subjects::BREAK_GLASS_STREAM`]
//! (TILLIT account, file storage, created by `serve`) keeps them whether `serve` runs or not.
//! The leader reads the stream from where it stopped ([`Seen::seq`](crate::estate::breakglass::Seen)),
//! and each connect of a break-glass user — the current bundle's or a rotated one's — becomes a
//! `break-glass.connect` audit record (with the stream sequence, so a duplicate after a crash
//! between the record and the saved sequence is recognisable) and a line in `status`.

use super::Ctx;
use crate::audit::Entry;
use crate::breakglass::{self as bg, Connection};
use crate::clock::rfc3339;
use crate::subjects;
use async_nats::jetstream;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader reads the stream.
pub(super) const READ_EVERY: Duration = Duration::from_secs(1);
/// Most events read per run.
const MAX_PER_RUN: u64 = 1_000;
/// How many connect events the stream keeps (every SYS connection: the control plane's own,
/// break-glass ones): plenty for a year of restarts, bounded on disk.
const STREAM_MAX_MSGS: i64 = 100_000;
/// How long the stream keeps them.
const STREAM_MAX_AGE: Duration = Duration::from_secs(400 * 86_400);

/// Create (or find) the stream of the SYS account's connect events.
pub(super) async fn ensure_stream(api: &async_nats::Client, replicas: usize) -> Result<jetstream::stream::Stream, String> {
    jetstream::new(api.clone())
        .get_or_create_stream(jetstream::stream::Config {
            name: subjects::BREAK_GLASS_STREAM.into(),
            subjects: vec![subjects::SYS_CONNECT_EVENTS.into()],
            storage: jetstream::stream::StorageType::File,
            max_messages: STREAM_MAX_MSGS,
            max_age: STREAM_MAX_AGE,
            max_bytes: 256 << 20,
            discard: jetstream::stream::DiscardPolicy::Old,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// One run: read the events stored since the last run and record the break-glass connections.
pub(super) async fn read_connections(ctx: &Arc<Ctx>) {
    if let Err(e) = read_once(ctx).await {
        tracing::warn!("break-glass connections: {e}");
    }
}

async fn read_once(ctx: &Arc<Ctx>) -> Result<(), String> {
    let e = &ctx.estate;
    let Some(record) = e.break_glass().map_err(|x| x.to_string())? else { return Ok(()) };
    let replicas = e.config.store.replicas();
    let mut stream = ensure_stream(&ctx.api, replicas).await?;
    let state = stream.info().await.map_err(|x| x.to_string())?.state.clone();
    let seen = e.break_glass_seen().map_err(|x| x.to_string())?;
    let from = (seen.seq + 1).max(state.first_sequence);
    if state.last_sequence < from {
        return Ok(());
    }
    let to = state.last_sequence.min(from + MAX_PER_RUN - 1);
    let sys = e.account(crate::estate::SYS_ACCOUNT).map_err(|x| x.to_string())?.public_key;
    for seq in from..=to {
        let msg = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Deleted or aged out in between: nothing to read there.
            Err(x) if x.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => continue,
            Err(x) => {
                e.note_break_glass_seen(seq - 1, vec![]).map_err(|x| x.to_string())?;
                return Err(format!("reading {} at {seq}: {x}", subjects::BREAK_GLASS_STREAM));
            }
        };
        let Some(c) = bg::judge_event(seq, &msg.payload, &sys, &record) else { continue };
        record_connection(ctx, &c).await?;
        e.note_break_glass_seen(seq, vec![c]).map_err(|x| x.to_string())?;
    }
    e.note_break_glass_seen(to, vec![]).map_err(|x| x.to_string())?;
    Ok(())
}

async fn record_connection(ctx: &Ctx, c: &Connection) -> Result<(), String> {
    let current = ctx.estate.break_glass().ok().flatten().is_some_and(|r| r.fingerprint == c.fingerprint);
    tracing::warn!(server = %c.server, host = %c.host, at = %c.at, bundle = %c.fingerprint, current, "a break-glass bundle was used to connect");
    let entry = Entry::ok(&format!("break-glass:{}", c.user), "break-glass.connect", &c.server).detail(serde_json::json!({
        "bundle": c.fingerprint,
        "current_bundle": current,
        "user": c.user,
        "host": c.host,
        "at": c.at,
        "name": c.name,
        "stream_seq": c.seq,
    }));
    ctx.journal.record(entry).await.map(|_| ()).map_err(|x| format!("audit: {x}"))
}

/// The break-glass part of `status`.
pub(super) fn status(ctx: &Ctx) -> Option<crate::proto::BreakGlassStatus> {
    let e = &ctx.estate;
    let record = e.break_glass().ok().flatten()?;
    let seen = e.break_glass_seen().unwrap_or_default();
    Some(crate::proto::BreakGlassStatus {
        fingerprint: record.fingerprint,
        created_at: rfc3339(record.created_at),
        expires_at: rfc3339(record.expires_at),
        rotated: record.previous.len(),
        connections_total: seen.total,
        last_connection: seen.connections.last().map(|c| c.at.clone()),
        connections: seen
            .connections
            .into_iter()
            .rev()
            .map(|c| crate::proto::BreakGlassConnection { at: c.at, server: c.server, host: c.host, user: c.user, bundle: c.fingerprint })
            .collect(),
        bundle_in_data_dir: e.dir.break_glass_bundle().exists(),
    })
}
