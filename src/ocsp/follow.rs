//! Keep a [`Copy`] current from the `TILLIT_OCSP` bucket's stream.
//!
//! Reads with JetStream's batched direct get (`$JS[.<domain>].API.DIRECT.GET.KV_TILLIT_OCSP`,
//! `{"seq": n, "batch": 256}`): no consumer to create or clean up, one request-reply per poll,
//! nothing but read access needed, and it works the same at the hub (`$JS.API`) and through a
//! site's leafnode link (`$JS.hub.API`). A poll that finds nothing new waits [`POLL`]; a site cut
//! off from the hub keeps answering from its copy and catches up on the first poll after the
//! heal.

use super::copy::Copy;
use crate::subjects;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// How often the stream is asked for what is new.
pub const POLL: Duration = Duration::from_millis(200);
/// Most messages asked for per request.
const BATCH: usize = 256;
/// How long one reply message may take.
const REPLY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("no reply from JetStream within {0:?}")]
    Timeout(Duration),
    #[error("JetStream answered {0}")]
    Status(String),
}

/// One read: every message from `copy.last_seq() + 1` on, up to 256. Returns how many
/// were read and whether more are waiting.
pub async fn read_once(client: &async_nats::Client, api: &str, copy: &Copy) -> Result<(usize, bool), FollowError> {
    let from = copy.last_seq() + 1;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| FollowError::Nats(e.to_string()))?;
    let subject = subjects::ocsp_direct_get(api);
    let body = serde_json::json!({ "seq": from, "batch": BATCH }).to_string();
    client.publish_with_reply(subject, inbox, body.into()).await.map_err(|e| FollowError::Nats(e.to_string()))?;
    let prefix = format!("$KV.{}.", subjects::OCSP_BUCKET);
    let mut read = 0;
    loop {
        let msg = match tokio::time::timeout(REPLY_WAIT, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(FollowError::Nats("subscription closed".into())),
            Err(_) => return Err(FollowError::Timeout(REPLY_WAIT)),
        };
        if let Some(status) = msg.status {
            return match status.as_u16() {
                // Nothing at or after `from`.
                404 => Ok((read, false)),
                // End of batch: more waiting when Nats-Num-Pending says so.
                204 => {
                    let pending = header_u64(&msg, "Nats-Num-Pending").unwrap_or(0);
                    Ok((read, pending > 0))
                }
                503 => Err(FollowError::Status("no responders (is the bucket there, is the hub reachable?)".into())),
                code => Err(FollowError::Status(format!("{code} {}", msg.description.unwrap_or_default()))),
            };
        }
        let (Some(seq), Some(subject)) = (header_u64(&msg, "Nats-Sequence"), header_str(&msg, "Nats-Subject")) else {
            return Err(FollowError::Status("a reply without Nats-Sequence or Nats-Subject".into()));
        };
        read += 1;
        let Some(serial) = subject.strip_prefix(&prefix) else { continue };
        let deleted = matches!(header_str(&msg, "KV-Operation").as_deref(), Some("DEL") | Some("PURGE"));
        copy.apply(seq, serial, if deleted { None } else { Some(&msg.payload) });
    }
}

fn header_str(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str().to_string())
}

fn header_u64(m: &async_nats::Message, name: &str) -> Option<u64> {
    header_str(m, name)?.trim().parse().ok()
}

/// How often a changed copy is written to its file: each save rewrites every answer, so a
/// large copy is saved less often (a second per thousand answers, 1 to 30 s). What a crash
/// loses is read again from the bucket: the file's `last_seq` is saved with its answers.
fn save_every(answers: usize) -> Duration {
    Duration::from_secs((answers / 1000).clamp(1, 30) as u64)
}

/// Follow the bucket into `copy` for ever: read until nothing is new, wait [`POLL`], again.
/// Failures are logged once until the next success (a cut-off site fails every poll).
pub async fn follow(client: async_nats::Client, api: String, copy: Arc<Copy>) {
    let mut failing = false;
    let mut saved = std::time::Instant::now();
    loop {
        match read_once(&client, &api, &copy).await {
            Ok((_, true)) => continue,
            Ok(_) => {
                if failing {
                    tracing::info!(answers = copy.len(), last_seq = copy.last_seq(), "OCSP answers: following the bucket again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("OCSP answers: cannot read the bucket ({e}); answering from the copy ({} answers)", copy.len());
                    failing = true;
                }
            }
        }
        if saved.elapsed() >= save_every(copy.len()) {
            let c = copy.clone();
            let _ = tokio::task::spawn_blocking(move || c.save()).await;
            saved = std::time::Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}
