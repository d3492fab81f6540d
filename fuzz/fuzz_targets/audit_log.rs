//! The audit log (`DATA/audit/audit.jsonl`): each line as a `Record`, `audit::verify` and
//! `audit::tail` on the file, and `Writer::open`, the crash recovery that replays records into
//! the store (an in-memory one here) before appending. The log has no in-memory parser in the
//! public API, so the input is written to a file on tmpfs each iteration.
//!
//! Invariants: a log `verify` accepts is one recovery accepts (unless its last line is torn), and
//! after recovery and one append, `verify` accepts the log.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use tillit::audit::{self, Entry, Record, Writer};
use tillit_fuzz::*;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let _ = serde_json::from_slice::<Record>(line);
    }
    let dir = scratch("audit");
    let path = dir.join(audit::AUDIT_FILE);
    put_file(&path, Some(data));
    let before = audit::verify(&path).expect("the file is readable");
    let _ = audit::tail(&path, 3);
    let _ = audit::tail(&path, 0);
    let opened = Writer::open(&dir, Arc::new(MemStore::default()), clock());
    let torn = !data.is_empty() && !data.ends_with(b"\n");
    if before.is_ok() && !torn {
        assert!(opened.is_ok(), "verify accepts the log but recovery refuses it: {:?}", opened.err());
    }
    if let Ok(mut w) = opened {
        w.append(vec![Entry::ok("tillit", "fuzz", "target")]).expect("append");
        let after = audit::verify(&path).expect("the file is readable");
        assert!(after.is_ok(), "recovery accepted the log but the appended chain does not verify: {:?}", after);
    }
});
