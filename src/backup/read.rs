//! Reading a backup ([`read`]): untrusted until its MAC matches, so every line is bounded and
//! checked as it comes, and the caller acts on what it saw only once `read` returned `Ok`.

use super::{content_mac, file_aad, key_check, BackupError, Header, Line, Manifest, FORMAT, MAX_BACKUP, MAX_LINE, TYPE_HEADER};
use crate::audit::Chain;
use crate::crypto::MasterKey;
use crate::layout::DataDir;
use crate::store::Space;
use data_encoding::BASE64;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use zeroize::Zeroizing;

/// One thing a backup holds, checked, as [`read`] hands it over.
#[derive(Debug)]
pub enum Item<'a> {
    /// A store record, its value as stored.
    Record { space: Space, key: String, value: Vec<u8> },
    /// A data dir file: its path (relative, checked: no `..`, nothing a backup leaves out), its
    /// mode, its content (opened when it was sealed).
    File { path: PathBuf, mode: u32, data: Zeroizing<Vec<u8>> },
    /// An audit record's line, exactly as written, and its seq.
    Audit { line: &'a [u8], seq: u64 },
}

/// A backup that verified.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub header: Header,
    pub manifest: Manifest,
    /// Size and SHA-256 of the whole file.
    pub bytes: u64,
    pub sha256: String,
    /// Audit records whose MAC was checked, and records from before records were MACed.
    pub audit_authenticated: u64,
    pub audit_legacy: u64,
}

/// Where in the backup a reader is: the sections come in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Records,
    Files,
    Audit,
    Manifest,
}

/// Read and check the backup at `path` with `master`, handing each record, file and audit line
/// to `visit` as it comes; what it holds once everything (the MAC last) checked out.
pub fn read(path: &Path, master: &MasterKey, mut visit: impl FnMut(Item<'_>) -> Result<(), BackupError>) -> Result<Verified, BackupError> {
    let p = path.display().to_string();
    let damaged = |line: u64, reason: String| BackupError::Damaged { path: p.clone(), line, reason };
    let file = std::fs::File::open(path).map_err(super::io(path))?;
    let len = file.metadata().map_err(super::io(path))?.len();
    if len > MAX_BACKUP {
        return Err(BackupError::TooLarge { path: p.clone(), max: MAX_BACKUP });
    }
    let mut rd = Lines { rd: BufReader::new(file.take(MAX_BACKUP + 1)), n: 0, path };
    let mut sha = Sha256::new();
    let mut buf = Vec::new();
    if rd.next(&mut buf, Some(&mut sha))?.is_none() {
        return Err(BackupError::NotABackup { path: p.clone() });
    }
    let header: Header = serde_json::from_slice(&buf)
        .ok()
        .filter(|h: &Header| h.kind == TYPE_HEADER)
        .ok_or_else(|| BackupError::NotABackup { path: p.clone() })?;
    if header.format != FORMAT {
        return Err(BackupError::Format { path: p.clone(), found: header.format });
    }
    if !crate::crypto::ct_eq(header.key_check.as_bytes(), key_check(master).as_bytes()) {
        return Err(BackupError::WrongKey { path: p.clone() });
    }

    let mut section = Section::Records;
    let mut counted: BTreeMap<String, u64> = Space::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    let (mut files, mut sealed_files, mut file_bytes) = (0u64, 0u64, 0u64);
    let mut last_key: Option<(usize, String)> = None;
    let mut last_path: Option<PathBuf> = None;
    let mut chain = Chain::new(master.derive(crate::audit::AUDIT_KEY_LABEL));
    let manifest = loop {
        if rd.next(&mut buf, Some(&mut sha))?.is_none() {
            return Err(BackupError::Truncated { path: p.clone() });
        }
        let line: Line = serde_json::from_slice(&buf).map_err(|e| damaged(rd.n, format!("not a backup line: {e}")))?;
        let kind = match &line {
            Line::Record { .. } => Section::Records,
            Line::File { .. } => Section::Files,
            Line::Audit { .. } => Section::Audit,
            Line::Manifest(_) => Section::Manifest,
            Line::Mac { .. } => return Err(damaged(rd.n, "the MAC line comes before the manifest".into())),
        };
        if kind < section {
            return Err(damaged(rd.n, format!("a {kind:?} line after the {section:?} section")));
        }
        section = kind;
        match line {
            Line::Record { space, key, value_b64 } => {
                let s = Space::named(&space).ok_or_else(|| damaged(rd.n, format!("no such space {space:?}")))?;
                let at = Space::ALL.iter().position(|x| *x == s).unwrap_or(usize::MAX);
                if last_key.as_ref().is_some_and(|(ls, lk)| (*ls, lk.as_str()) >= (at, key.as_str())) {
                    return Err(damaged(rd.n, format!("record {space}/{key} is out of order or repeated")));
                }
                let value = BASE64.decode(value_b64.as_bytes()).map_err(|e| damaged(rd.n, format!("record {space}/{key}: {e}")))?;
                *counted.entry(space).or_default() += 1;
                last_key = Some((at, key.clone()));
                visit(Item::Record { space: s, key, value })?;
            }
            Line::File { path: rel, mode, sealed, data_b64 } => {
                let path = checked_path(&rel).map_err(|why| damaged(rd.n, format!("file {rel:?}: {why}")))?;
                if last_path.as_ref().is_some_and(|l| *l >= path) {
                    return Err(damaged(rd.n, format!("file {rel} is out of order or repeated")));
                }
                if mode & !0o777 != 0 {
                    return Err(damaged(rd.n, format!("file {rel}: mode {mode:o} is not a permission mode")));
                }
                let stored = Zeroizing::new(BASE64.decode(data_b64.as_bytes()).map_err(|e| damaged(rd.n, format!("file {rel}: {e}")))?);
                let data = if sealed {
                    master.open(&file_aad(&rel), &stored).map_err(|_| damaged(rd.n, format!("file {rel}: its sealed content does not open")))?
                } else {
                    stored
                };
                files += 1;
                sealed_files += sealed as u64;
                file_bytes += data.len() as u64;
                last_path = Some(path.clone());
                visit(Item::File { path, mode, data })?;
            }
            Line::Audit { line } => {
                chain.push(line.as_bytes()).map_err(|e| damaged(rd.n, format!("audit chain: {e}")))?;
                visit(Item::Audit { line: line.as_bytes(), seq: chain.seq })?;
            }
            Line::Manifest(m) => break m,
            // Refused above.
            Line::Mac { .. } => {}
        }
    };
    let manifest_line = rd.n;
    let sha_hex = data_encoding::HEXLOWER.encode(&sha.clone().finalize());
    if rd.next(&mut buf, None)?.is_none() {
        return Err(BackupError::Truncated { path: p.clone() });
    }
    let Ok(Line::Mac { sha256, mac }) = serde_json::from_slice::<Line>(&buf) else {
        return Err(damaged(rd.n, "expected the MAC line after the manifest".into()));
    };
    let mac_ok = sha256 == sha_hex && crate::crypto::ct_eq(mac.as_bytes(), content_mac(master, &sha_hex).as_bytes());
    if !mac_ok {
        return Err(BackupError::Altered { path: p.clone() });
    }
    let mut rest = [0u8; 1];
    if rd.rd.read(&mut rest).map_err(super::io(path))? > 0 {
        return Err(damaged(rd.n + 1, "bytes after the MAC line".into()));
    }
    // The MAC vouches for the manifest; it must also say what was read.
    let mismatch = |what: &str, said: String, found: String| damaged(manifest_line, format!("the manifest says {said} {what}, the backup holds {found}"));
    if manifest.records != counted {
        return Err(mismatch("records per space", format!("{:?}", manifest.records), format!("{counted:?}")));
    }
    if (manifest.files, manifest.sealed_files, manifest.file_bytes) != (files, sealed_files, file_bytes) {
        return Err(mismatch("files", manifest.files.to_string(), files.to_string()));
    }
    if manifest.audit.records != chain.seq || manifest.audit.head != chain.hash {
        return Err(mismatch("audit records", format!("{} (head {})", manifest.audit.records, manifest.audit.head), format!("{} (head {})", chain.seq, chain.hash)));
    }
    if manifest.audit.applied > chain.seq {
        return Err(damaged(manifest_line, format!("the manifest says the store applied audit record {} of {}", manifest.audit.applied, chain.seq)));
    }
    let whole = std::fs::metadata(path).map(|m| m.len()).unwrap_or(len);
    let mut all = sha;
    all.update(&buf);
    all.update(b"\n");
    Ok(Verified {
        header,
        manifest,
        bytes: whole,
        sha256: data_encoding::HEXLOWER.encode(&all.finalize()),
        audit_authenticated: chain.authenticated,
        audit_legacy: chain.legacy,
    })
}

/// The backup's lines, bounded.
struct Lines<'a, R> {
    rd: R,
    /// The line last read (1-based).
    n: u64,
    path: &'a Path,
}

impl<R: BufRead> Lines<'_, R> {
    /// The next line into `buf` without its newline (hashed with it into `sha`); `None` at the
    /// end. A last line without a newline is a truncation.
    fn next(&mut self, buf: &mut Vec<u8>, sha: Option<&mut Sha256>) -> Result<Option<()>, BackupError> {
        buf.clear();
        self.n += 1;
        self.rd.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf).map_err(super::io(self.path))?;
        if buf.is_empty() {
            return Ok(None);
        }
        let p = self.path.display().to_string();
        if buf.last() != Some(&b'\n') {
            return Err(if buf.len() > MAX_LINE {
                BackupError::Damaged { path: p, line: self.n, reason: format!("the line is longer than {MAX_LINE} bytes") }
            } else {
                BackupError::Truncated { path: p }
            });
        }
        if let Some(sha) = sha {
            sha.update(&buf[..]);
        }
        buf.pop();
        Ok(Some(()))
    }
}

/// A file path from a backup: relative, plain components only, UTF-8, not something a backup
/// leaves out (the master key, the store, the audit log are never restored from a file line).
fn checked_path(rel: &str) -> Result<PathBuf, &'static str> {
    let path = PathBuf::from(rel);
    if rel.is_empty() || rel.len() > 4096 || rel.contains('\0') {
        return Err("not a path");
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("not a plain relative path");
    }
    if DataDir::not_backed_up(&path) {
        return Err("a backup never holds it");
    }
    Ok(path)
}
