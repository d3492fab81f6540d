//! Writing a backup ([`write`]): header, records, files, audit lines, manifest, MAC.

use super::{content_mac, file_aad, io, is_private_name, key_check, AuditSummary, BackupError, Header, Line, Manifest, Taken, MAX_FILE, MAX_LINE};
use super::snapshot::AuditLines;
use crate::audit::Chain;
use crate::crypto::MasterKey;
use crate::layout::DataDir;
use data_encoding::BASE64;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Lines out, hashed as they go.
struct Out<'a> {
    w: &'a mut dyn Write,
    sha: Sha256,
    bytes: u64,
}

impl Out<'_> {
    fn line(&mut self, value: &impl serde::Serialize) -> Result<(), BackupError> {
        let mut text = serde_json::to_vec(value).map_err(|e| BackupError::Source(format!("encoding a backup line: {e}")))?;
        if text.len() > MAX_LINE {
            return Err(BackupError::Source(format!("a backup line would be {} bytes, over the {MAX_LINE} a reader takes", text.len())));
        }
        text.push(b'\n');
        self.sha.update(&text);
        self.bytes += text.len() as u64;
        self.w.write_all(&text).map_err(|source| BackupError::Io { path: "the backup".into(), source })
    }
}

/// Write the backup of `taken` and of the data dir `dir`'s files to `w`; its manifest.
pub fn write(w: &mut dyn Write, taken: &Taken, dir: &DataDir, master: &MasterKey, trust_domain: &str, now: i64) -> Result<Manifest, BackupError> {
    let mut out = Out { w, sha: Sha256::new(), bytes: 0 };
    out.line(&Header {
        kind: super::TYPE_HEADER.into(),
        format: super::FORMAT,
        created_at: now,
        trust_domain: trust_domain.into(),
        data_dir: std::fs::canonicalize(dir.root()).unwrap_or_else(|_| dir.root().to_path_buf()).display().to_string(),
        store: taken.store.into(),
        tillit: env!("CARGO_PKG_VERSION").into(),
        key_check: key_check(master),
    })?;
    let mut m = Manifest::default();
    for (space, records) in &taken.records {
        m.records.insert(space.as_str().into(), records.len() as u64);
        for (key, value) in records {
            out.line(&Line::Record { space: space.as_str().into(), key: key.clone(), value_b64: BASE64.encode(value) })?;
        }
    }
    for rel in files(dir.root())? {
        let path = dir.root().join(&rel);
        let rel = rel.to_str().ok_or_else(|| BackupError::Source(format!("{}: the name is not UTF-8", path.display())))?.to_string();
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        let meta = f.metadata().map_err(io(&path))?;
        if meta.len() > MAX_FILE {
            return Err(BackupError::Source(format!("{} is {} bytes; a backup takes files of at most {MAX_FILE}", path.display(), meta.len())));
        }
        let mut data = zeroize::Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        Read::by_ref(&mut f).take(MAX_FILE + 1).read_to_end(&mut data).map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o777;
        let sealed = mode & 0o077 == 0 || path.file_name().and_then(|n| n.to_str()).is_some_and(is_private_name);
        let stored = if sealed { master.seal(&file_aad(&rel), &data)? } else { data.to_vec() };
        m.files += 1;
        m.sealed_files += sealed as u64;
        m.file_bytes += data.len() as u64;
        out.line(&Line::File { path: rel, mode, sealed, data_b64: BASE64.encode(&stored) })?;
    }
    let mut chain = Chain::new(master.derive(crate::audit::AUDIT_KEY_LABEL));
    let mut each = |line: &[u8]| -> Result<(), BackupError> {
        chain.push(line).map_err(|e| BackupError::Source(format!("the audit log does not verify: {e}; run `tillit audit verify`")))?;
        let text = std::str::from_utf8(line).map_err(|_| BackupError::Source(format!("audit record {} is not UTF-8", chain.seq)))?;
        out.line(&Line::Audit { line: text.to_string() })
    };
    match &taken.audit {
        AuditLines::Lines(lines) => lines.iter().try_for_each(|l| each(l))?,
        AuditLines::File { path, upto } => match std::fs::File::open(path) {
            // A store without a log: an estate whose log was never written (nothing to take).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && taken.applied == 0 => {}
            Err(e) => return Err(io(path)(e)),
            Ok(f) => {
                let mut rd = BufReader::new(f.take(upto.unwrap_or(u64::MAX)));
                let mut line = Vec::new();
                loop {
                    line.clear();
                    rd.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).map_err(io(path))?;
                    // The end, or a torn last line (a crash mid-write): not a record.
                    if line.last() != Some(&b'\n') {
                        break;
                    }
                    line.pop();
                    each(&line)?;
                }
            }
        },
    }
    if taken.applied > chain.seq {
        return Err(BackupError::Source(format!(
            "the store says it applied audit record {} but the log ends at {}: the log was cut off; run `tillit audit verify`",
            taken.applied, chain.seq
        )));
    }
    m.audit = AuditSummary { records: chain.seq, head: chain.hash.clone(), applied: taken.applied };
    m.events_last_seq = taken.events_last_seq;
    out.line(&Line::Manifest(m.clone()))?;
    let sha = data_encoding::HEXLOWER.encode(&out.sha.clone().finalize());
    let mac = content_mac(master, &sha);
    out.line(&Line::Mac { sha256: sha, mac })?;
    out.w.flush().map_err(|source| BackupError::Io { path: "the backup".into(), source })?;
    Ok(m)
}

/// The regular files of the data dir at `root` a backup takes, relative, in path order
/// (symlinks, sockets and what [`DataDir::not_backed_up`] names are left out).
fn files(root: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let here = root.join(&rel);
        for entry in std::fs::read_dir(&here).map_err(io(&here))? {
            let entry = entry.map_err(io(&here))?;
            let rel = rel.join(entry.file_name());
            if DataDir::not_backed_up(&rel) {
                continue;
            }
            let kind = entry.file_type().map_err(io(&here))?;
            if kind.is_dir() {
                dirs.push(rel);
            } else if kind.is_file() {
                found.push(rel);
            } else {
                tracing::warn!(path = %rel.display(), "not a regular file or directory; left out of the backup");
            }
        }
    }
    found.sort();
    Ok(found)
}
