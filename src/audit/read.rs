//! Reading the log: [`verify`] (chain, MACs, head anchor) and [`tail`].

use super::{line_mac, AuditError, Head, Record, GENESIS, HEAD_FILE};
use crate::crypto::{self, MacKey};
use serde::Serialize;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

// === reading ===

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub records: u64,
    pub head: String,
    /// Records whose MAC was checked (0 when no key was given).
    pub authenticated: u64,
    /// Records from before records were authenticated (all at the start of the log).
    pub legacy: u64,
    /// Whether the head anchor was found and matched.
    pub anchored: bool,
}

/// A broken chain: the first bad record and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at line {line} (seq {seq}): {reason}")]
pub struct ChainError {
    pub line: usize,
    pub seq: u64,
    pub reason: String,
}

/// Check the whole log at `path`: the chain, and with `key` every record's MAC (once the log
/// has an authenticated record, every later one must be) and the head anchor next to it (a log
/// that ends before its anchor was truncated).
pub fn verify(path: &Path, key: Option<&MacKey>) -> Result<Result<Verified, ChainError>, AuditError> {
    let io = |source| AuditError::Io { path: path.display().to_string(), source };
    let rd = BufReader::new(File::open(path).map_err(io)?);
    let mut prev_hash = GENESIS.to_string();
    let mut prev_seq = 0u64;
    let (mut authenticated, mut legacy) = (0u64, 0u64);
    // The head anchor, read first (it may only lag the log): the hash seen at its seq.
    let head: Option<Head> = match (key, path.parent()) {
        (Some(key), Some(dir)) => match std::fs::read(dir.join(HEAD_FILE)) {
            Ok(bytes) => match serde_json::from_slice::<Head>(&bytes).ok().filter(|h| h.authentic(key)) {
                Some(h) => Some(h),
                None => {
                    return Ok(Err(ChainError { line: 0, seq: 0, reason: format!("{HEAD_FILE} is not authenticated by this estate's master key") }))
                }
            },
            Err(_) => None,
        },
        _ => None,
    };
    let mut at_head: Option<String> = None;
    for (i, line) in rd.split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        let n = i + 1;
        if let Some(key) = key {
            match line_mac(key, &line) {
                Some(true) => authenticated += 1,
                Some(false) => {
                    return Ok(Err(ChainError {
                        line: n,
                        seq: prev_seq + 1,
                        reason: "its MAC does not match: the record was written or altered without the master key".into(),
                    }))
                }
                None if authenticated == 0 => legacy += 1,
                None => {
                    return Ok(Err(ChainError {
                        line: n,
                        seq: prev_seq + 1,
                        reason: "it carries no MAC after authenticated records: it was added without the master key".into(),
                    }))
                }
            }
        }
        let rec: Record = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => return Ok(Err(ChainError { line: n, seq: prev_seq + 1, reason: format!("not a record: {e}") })),
        };
        if rec.seq != prev_seq + 1 {
            return Ok(Err(ChainError {
                line: n,
                seq: rec.seq,
                reason: format!("expected seq {} (records deleted or reordered)", prev_seq + 1),
            }));
        }
        if rec.prev != prev_hash {
            return Ok(Err(ChainError {
                line: n,
                seq: rec.seq,
                reason: if n == 1 {
                    "the first record does not start the chain".into()
                } else {
                    format!("prev does not match the hash of line {} (that record was altered, or this one)", n - 1)
                },
            }));
        }
        prev_hash = crypto::sha256_hex(&line);
        prev_seq = rec.seq;
        if head.as_ref().is_some_and(|h| h.seq == prev_seq) {
            at_head = Some(prev_hash.clone());
        }
    }
    let mut anchored = false;
    if let Some(head) = head {
        {
            if head.seq > prev_seq {
                return Ok(Err(ChainError {
                    line: prev_seq as usize + 1,
                    seq: prev_seq + 1,
                    reason: format!("the log ends at seq {prev_seq} but its head anchor says {}: records were removed from the end", head.seq),
                }));
            }
            if head.seq > 0 && at_head.as_deref() != Some(head.hash.as_str()) {
                return Ok(Err(ChainError { line: head.seq as usize, seq: head.seq, reason: "the record at the head anchor was replaced".into() }));
            }
            anchored = true;
        }
    }
    Ok(Ok(Verified { records: prev_seq, head: prev_hash, authenticated, legacy, anchored }))
}

/// The last `n` records, read backwards from the end of the file (a long log costs no more
/// than its last `n` lines).
pub fn tail(path: &Path, n: usize) -> Result<Vec<Record>, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| AuditError::Io { path: path.display().to_string(), source };
    let mut f = File::open(path).map_err(io)?;
    let len = f.seek(SeekFrom::End(0)).map_err(io)?;
    const CHUNK: u64 = 64 * 1024;
    // Bytes from `at` to the end; read backwards until they hold `n` whole lines (or the file).
    let (mut at, mut buf) = (len, Vec::<u8>::new());
    while at > 0 && bytecount_lines(&buf) <= n {
        let step = CHUNK.min(at);
        at -= step;
        f.seek(SeekFrom::Start(at)).map_err(io)?;
        let mut chunk = vec![0u8; step as usize];
        f.read_exact(&mut chunk).map_err(io)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    // The first line is whole only if the read reached the start of the file.
    let whole = if at == 0 { &lines[..] } else { lines.get(1..).unwrap_or(&[]) };
    let keep = &whole[whole.len().saturating_sub(n)..];
    let mut out = Vec::with_capacity(keep.len());
    for (i, line) in keep.iter().enumerate() {
        let from_end = keep.len() - i;
        let rec: Record = serde_json::from_slice(line).map_err(|e| AuditError::Damaged {
            path: path.display().to_string(),
            line: from_end,
            reason: format!("{e} (counting lines from the end of the log)"),
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// The last `n` records before sequence number `before` (all of them when `None`), oldest
/// first: read backwards from the end of the file, as far as `before` and `n` lines more.
pub fn tail_before(path: &Path, n: usize, before: Option<u64>) -> Result<Vec<Record>, AuditError> {
    let Some(before) = before else { return tail(path, n) };
    let last = tail(path, 1)?.last().map(|r| r.seq).unwrap_or(0);
    // Records are numbered one per line: the lines from `before` on are `last - before + 1`.
    let from_end = last.saturating_sub(before).saturating_add(1) as usize;
    let mut out: Vec<Record> = tail(path, n.saturating_add(from_end))?.into_iter().filter(|r| r.seq < before).collect();
    let skip = out.len().saturating_sub(n);
    out.drain(..skip);
    Ok(out)
}

fn bytecount_lines(b: &[u8]) -> usize {
    b.iter().filter(|x| **x == b'\n').count()
}
