//! The audit log (`DATA/audit/audit.jsonl`): each line as a `Record`, `audit::verify` (chain
//! only, and with the MAC key), `audit::tail`, and `Writer::open`: the crash recovery that
//! replays authenticated records into the store (an in-memory one here), then one append. The
//! log has no in-memory parser in the public API, so the input is written to a file on tmpfs.
//!
//! A fuzzer cannot forge HMACs: an input starting with `#` is re-authenticated by the harness
//! first (each line that parses as a record gets `prev` = the hash of the line before and a
//! valid `mac`), so recovery reaches the replay of redo ops.
//!
//! Invariant: once recovery accepted the log and appended to it, `verify` with the key accepts it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use tillit::audit::{self, Entry, Record, Writer};
use tillit_fuzz::*;

/// `line` with every record re-chained and MACed as the writer would.
fn authenticate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 128);
    let mut prev = audit::GENESIS.to_string();
    for line in data.split(|&b| b == b'\n') {
        let line = match serde_json::from_slice::<Record>(line) {
            Ok(mut rec) => {
                rec.prev = prev.clone();
                rec.mac = None;
                let mut body = serde_json::to_vec(&rec).unwrap_or_default();
                let mac = audit_key().mac_hex(&body);
                body.pop();
                body.extend_from_slice(b",\"mac\":\"");
                body.extend_from_slice(mac.as_bytes());
                body.extend_from_slice(b"\"}");
                body
            }
            Err(_) => line.to_vec(),
        };
        prev = tillit::crypto::sha256_hex(&line);
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out.pop();
    out
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let data: &[u8] = match data.strip_prefix(b"#") {
        Some(rest) => {
            owned = authenticate(rest);
            &owned
        }
        None => data,
    };
    for line in data.split(|&b| b == b'\n') {
        let _ = serde_json::from_slice::<Record>(line);
    }
    let dir = scratch("audit");
    let path = dir.join(audit::AUDIT_FILE);
    put_file(&path, Some(data));
    put_file(&dir.join(audit::HEAD_FILE), None);
    let _ = audit::verify(&path, None).expect("the file is readable");
    let _ = audit::verify(&path, Some(audit_key())).expect("the file is readable");
    let _ = audit::tail(&path, 3);
    let _ = audit::tail(&path, 0);
    if let Ok(mut w) = Writer::open(&dir, Arc::new(MemStore::default()), clock(), audit_key().clone()) {
        w.append(vec![Entry::ok("tillit", "fuzz", "target")]).expect("append");
        let after = audit::verify(&path, Some(audit_key())).expect("the file is readable");
        assert!(after.is_ok(), "recovery accepted the log but after one append it does not verify: {after:?}");
    }
});
