//! The backup socket: `serve` on a sled store answers `tillit backup` on `DATA/serve.sock`.
//!
//! sled locks its files, so while `serve` runs no other process can open the store; the backup
//! is taken here instead. The socket is made 0600 before it gets its name (bound under a
//! temporary name, chmod, renamed), so only the data dir's owner reaches it; it sends a backup,
//! which opens nothing without the master key. A request is one line
//! (`{"type":"io.tillit.v1.backup.request"}`); the answer is the backup itself
//! ([`crate::backup`]), or one `io.tillit.v1.backup.error` line. The records are the store's
//! [`crate::store::Store::snapshot`] (writes wait while it is read, milliseconds), the audit
//! log is taken up to the store's checkpoint in it, so records and chain head agree. Requests
//! keep being served meanwhile; the backup is audited (`backup`).
//!
//! A JetStream store needs no socket: `tillit backup` reads the bucket and the journal itself
//! (`crate::backup::snapshot::of_jetstream`), with or without replicas running; one replica's
//! socket could not hold the others' writes anyway.

use super::Ctx;
use crate::audit::Entry;
use std::io::Write;
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// Longest request line.
const MAX_REQUEST: u64 = 4096;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Listen on the data dir's socket until told to stop, then remove it. `None` when the store is
/// not sled, or the socket cannot be made (logged: `serve` runs on without it).
pub(super) fn start(ctx: &Arc<Ctx>, stop: &watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    if ctx.estate.config.store != crate::config::StoreBackend::Sled {
        return None;
    }
    let path = ctx.estate.dir.serve_socket();
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %path.display(), "no backup socket: {e}; `tillit backup` cannot take a backup while this serve runs");
            return None;
        }
    };
    tracing::info!(socket = %path.display(), "backup socket listening");
    let (ctx, stop) = (ctx.clone(), stop.clone());
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                conn = listener.accept() => match conn {
                    Ok((s, _)) => {
                        tokio::spawn(answer(ctx.clone(), s));
                    }
                    Err(e) => tracing::warn!("backup socket: {e}"),
                },
                _ = super::stopped(&stop) => break,
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// Bind `path` with mode 0600 from the start; a socket file left by a `serve` that died is
/// replaced, one something answers on is not.
fn bind(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::other("another process answers on it"));
        }
        std::fs::remove_file(path)?;
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(".serve.sock.{}", uuid::Uuid::new_v4().simple()));
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    let made = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Read one request and send the backup (or why not).
async fn answer(ctx: Arc<Ctx>, s: tokio::net::UnixStream) {
    let mut rd = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(s, MAX_REQUEST));
    let mut line = Vec::new();
    let asked = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await;
    let ok = matches!(asked, Ok(Ok(_)))
        && serde_json::from_slice::<serde_json::Value>(&line).ok().is_some_and(|v| v["type"] == crate::backup::TYPE_REQUEST);
    let s = rd.into_inner().into_inner();
    let events = ctx.events.last_seq().await;
    let std = match s.into_std().and_then(|s| s.set_nonblocking(false).map(|_| s)) {
        Ok(s) => s,
        Err(e) => return tracing::warn!("backup socket: {e}"),
    };
    let c = ctx.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std);
        if !ok {
            let _ = writeln!(out, "{}", serde_json::json!({ "type": crate::backup::TYPE_ERROR, "message": "not a backup request" }));
            return None;
        }
        let e = &c.estate;
        let taken = crate::backup::snapshot::of_sled(e.store(), e.dir.audit_log(), &e.audit_key(), true, Some(events));
        let written = taken.and_then(|t| crate::backup::write(&mut out, &t, &e.dir, e.master_key(), e.trust_domain(), e.clock().now_unix()));
        match written {
            Ok(m) => Some(m),
            Err(err) => {
                // Nothing sent yet for most failures (the snapshot comes first); otherwise the
                // client sees a backup without its MAC line.
                tracing::error!("backup refused: {err}");
                let _ = writeln!(out, "{}", serde_json::json!({ "type": crate::backup::TYPE_ERROR, "message": err.to_string() }));
                None
            }
        }
    })
    .await;
    if let Ok(Some(m)) = sent {
        tracing::info!(records = m.records_total(), files = m.files, audit = m.audit.records, "backup sent");
        ctx.journal.record_relaxed(Entry::ok("tillit", "backup", "estate").detail(serde_json::json!({
            "records": m.records_total(), "files": m.files, "audit_records": m.audit.records, "audit_head": m.audit.head,
        })));
    }
}
