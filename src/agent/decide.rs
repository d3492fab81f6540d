//! Deciding about one delivered event (pure): its subject's scope and kind, the stream
//! sequence it was copied from, and whether to skip, reject or apply it.

use super::AgentState;
use crate::envelope::Verifier;
use crate::subjects;
use async_nats::jetstream;

/// One event as the agent decided about it.
#[derive(Debug)]
pub(super) enum Decision {
    /// Already applied (at or below the state's sequence).
    Skip,
    /// Refused: forged, replayed, re-purposed, or for another site.
    Reject(String),
    /// To apply.
    Apply(Box<Verified>),
}

#[derive(Debug)]
pub(super) struct Verified {
    pub(super) seq: u64,
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) data: serde_json::Value,
}

/// The `TILLIT_EVENTS` sequence a message of the site's stream was copied from.
pub(super) fn origin_seq(m: &jetstream::Message) -> Result<u64, String> {
    let v = m
        .headers
        .as_ref()
        .and_then(|h| h.get(subjects::HDR_STREAM_SOURCE))
        .ok_or_else(|| "no Nats-Stream-Source header (not copied from the event stream)".to_string())?;
    match subjects::stream_source(v.as_str()) {
        Some((name, seq)) if name == subjects::EVENTS_STREAM => Ok(seq),
        _ => Err(format!("Nats-Stream-Source {:?} does not name {}", v.as_str(), subjects::EVENTS_STREAM)),
    }
}

/// Decide about one delivered event (pure: no I/O).
pub(super) fn decide(verifier: &Verifier, site: &str, state: &AgentState, subject: &str, stream_seq: u64, payload: &[u8], now: i64) -> Decision {
    if stream_seq <= state.last_seq {
        return Decision::Skip;
    }
    let Some((scope, kind)) = subjects::parse_event_subject(subject) else {
        return Decision::Reject(format!("subject {subject} is not an event subject"));
    };
    if scope != "all" && scope != site {
        return Decision::Reject(format!("event for site {scope}, not {site}"));
    }
    let Ok(token) = std::str::from_utf8(payload) else {
        return Decision::Reject("payload is not text".into());
    };
    let ev = match verifier.check::<serde_json::Value>(token, &subjects::event_type(kind), now) {
        Ok(ev) => ev,
        Err(e) => return Decision::Reject(e.to_string()),
    };
    if ev.seq != Some(stream_seq) {
        return Decision::Reject(format!("envelope seq {:?} is not its stream sequence {stream_seq} (replayed or re-published)", ev.seq));
    }
    Decision::Apply(Box::new(Verified { seq: stream_seq, id: ev.id, kind: kind.to_string(), data: ev.data }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TrustSet;

    fn signer() -> (crate::envelope::Signer, Verifier) {
        let kp = nkeys::KeyPair::new_account();
        let jwks = serde_json::json!({"keys": [crate::envelope::jwk(&kp.public_key(), "tillit://td", &kp.public_key(), "current").unwrap()]});
        let v = Verifier::new(TrustSet::from_jwks(&jwks.to_string()).unwrap(), vec!["site:east".into()], 1);
        (crate::envelope::Signer::new(&kp.public_key(), "tillit://td", std::sync::Arc::new(kp)), v)
    }

    #[test]
    fn decision_table() {
        let (s, v) = signer();
        let now = 1_780_000_000;
        let data = serde_json::json!({"path": "acme/shop/prod/db", "version": 2});
        let good = s.sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "site:east", 60, Some(7), &data, now).unwrap();
        let subj = "tillit.v1.events.east.secret.rotated";
        let st = AgentState { last_seq: 3, ..Default::default() };
        assert!(matches!(decide(&v, "east", &st, subj, 7, good.as_bytes(), now), Decision::Apply(_)));
        // The same envelope at another stream position: re-published, refused.
        assert!(matches!(decide(&v, "east", &st, subj, 9, good.as_bytes(), now), Decision::Reject(_)));
        // Already applied: skipped (not an error).
        let done = AgentState { last_seq: 7, ..Default::default() };
        assert!(matches!(decide(&v, "east", &done, subj, 7, good.as_bytes(), now), Decision::Skip));
        // Another site's subject, or an envelope for another audience.
        assert!(matches!(decide(&v, "east", &st, "tillit.v1.events.west.secret.rotated", 7, good.as_bytes(), now), Decision::Reject(_)));
        let west = s.sign("io.tillit.v1.secret.rotated", "x", "site:west", 60, Some(8), &data, now).unwrap();
        assert!(matches!(decide(&v, "east", &st, subj, 8, west.as_bytes(), now), Decision::Reject(_)));
        // Re-purposed: a secret.rotated envelope on the ca.rotated subject.
        assert!(matches!(decide(&v, "east", &st, "tillit.v1.events.east.ca.rotated", 7, good.as_bytes(), now), Decision::Reject(_)));
        // Forged: signed by a key outside the trust set.
        let (other, _) = signer();
        let forged = other.sign("io.tillit.v1.secret.rotated", "x", "site:east", 60, Some(7), &data, now).unwrap();
        assert!(matches!(decide(&v, "east", &st, subj, 7, forged.as_bytes(), now), Decision::Reject(_)));
        // Expired, and garbage.
        assert!(matches!(decide(&v, "east", &st, subj, 7, good.as_bytes(), now + 120), Decision::Reject(_)));
        assert!(matches!(decide(&v, "east", &st, subj, 7, b"\xff\x00", now), Decision::Reject(_)));
    }
}
