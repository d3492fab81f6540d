//! Kept replies a single `serve` could not hold in memory until their requests expire (see
//! [`super::replies`]): appended, sealed, to one of two files in the data dir, with an index in
//! memory (key → where, until when) that holds only unexpired replies.
//!
//! They were written to the store before: each ~5 KiB reply written, then deleted a few minutes
//! later, was three quarters of the bytes a growing estate wrote to sled, and sled kept the
//! garbage (a store of 761 MiB at 20,000 services, 168 MiB without them).
//!
//! Two files take turns. Records are appended to the current one; once it holds
//! [`ROTATE_BYTES`] and every record of the other has expired (a request lives at most
//! [`crate::proto::MAX_REQUEST_LIFETIME`]), the other is emptied and becomes current. Disk
//! use is bounded by the replies of two minutes, memory by their index entries.
//!
//! A record: `u32` length of the rest (LE), `u16` key length, the key, `i64` expiry (LE), the
//! sealed reply. The reply is sealed by the caller with the master key and the key as associated
//! data, so whoever holds the data dir but not the master key learns nothing from a record and
//! cannot move one to another key. A record cut short by a crash ends the file at open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The size past which the current file gives way to the other (once all of its records expired).
pub(super) const ROTATE_BYTES: u64 = 16 << 20;
/// The largest record taken back at open (a kept reply is ~5 KiB; requests are capped well below).
const MAX_RECORD: u32 = 4 << 20;

/// Where an unexpired record lies.
#[derive(Clone, Copy, Debug)]
struct Entry {
    file: usize,
    offset: u64,
    len: u32,
    exp: i64,
}

/// One of the two files.
struct Slot {
    file: Arc<File>,
    /// Bytes of whole records (the next one goes here).
    len: u64,
    /// The latest expiry of a record in it.
    last_exp: i64,
}

struct State {
    slots: [Slot; 2],
    current: usize,
    index: HashMap<String, Entry>,
}

/// The two spill files and their index.
pub(super) struct Spill {
    state: Mutex<State>,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill").finish_non_exhaustive()
    }
}

fn record(key: &str, exp: i64, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
    let key_len = u16::try_from(key.len()).map_err(|_| std::io::Error::other("reply key too long"))?;
    let rest = u32::try_from(2 + key.len() + 8 + sealed.len()).ok().filter(|n| *n <= MAX_RECORD).ok_or_else(|| std::io::Error::other("reply too large to keep"))?;
    let mut b = Vec::with_capacity(4 + rest as usize);
    b.extend_from_slice(&rest.to_le_bytes());
    b.extend_from_slice(&key_len.to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&exp.to_le_bytes());
    b.extend_from_slice(sealed);
    Ok(b)
}

/// The rest of a record (after its length): key, expiry, sealed reply.
fn parse(rest: &[u8]) -> Option<(&str, i64, &[u8])> {
    let key_len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(rest.get(2..2 + key_len)?).ok()?;
    let exp = i64::from_le_bytes(rest.get(2 + key_len..10 + key_len)?.try_into().ok()?);
    Some((key, exp, rest.get(10 + key_len..)?))
}

/// Open (or create, 0600) `path` and index its unexpired records; a tail that is not a whole
/// record (a crash mid-append) is cut off.
fn open_slot(path: &std::path::Path, n: usize, now: i64, index: &mut HashMap<String, Entry>) -> std::io::Result<Slot> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(crate::fsutil::PRIVATE).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(crate::fsutil::PRIVATE))?;
    let mut rd = BufReader::with_capacity(64 << 10, &file);
    let (mut offset, mut last_exp) = (0u64, i64::MIN);
    let mut rest = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).is_err() {
            break;
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            break;
        }
        rest.resize(len as usize, 0);
        if rd.read_exact(&mut rest).is_err() {
            break;
        }
        let Some((key, exp, _)) = parse(&rest) else { break };
        if exp > now {
            index.insert(key.to_string(), Entry { file: n, offset, len: 4 + len, exp });
        }
        last_exp = last_exp.max(exp);
        offset += 4 + len as u64;
    }
    drop(rd);
    if file.metadata()?.len() != offset {
        file.set_len(offset)?;
    }
    Ok(Slot { file: Arc::new(file), len: offset, last_exp })
}

impl Spill {
    /// Open the two files (created 0600 if missing), taking back the unexpired records a
    /// previous run left.
    pub(super) fn open(paths: [PathBuf; 2], now: i64) -> std::io::Result<Spill> {
        let mut index = HashMap::new();
        let a = open_slot(&paths[0], 0, now, &mut index)?;
        let b = open_slot(&paths[1], 1, now, &mut index)?;
        let current = usize::from(b.last_exp > a.last_exp);
        Ok(Spill { state: Mutex::new(State { slots: [a, b], current, index }) })
    }

    /// Append the sealed reply to `key`, kept until `exp`.
    #[cfg(test)]
    pub(super) fn put(&self, key: &str, exp: i64, sealed: &[u8], now: i64) -> std::io::Result<()> {
        self.put_all(&[(key, exp, sealed)], now)
    }

    /// Append sealed replies (key, kept until, sealed) with one write.
    pub(super) fn put_all(&self, replies: &[(&str, i64, &[u8])], now: i64) -> std::io::Result<()> {
        let mut recs = Vec::with_capacity(replies.iter().map(|(k, _, s)| 14 + k.len() + s.len()).sum());
        let mut placed = Vec::with_capacity(replies.len());
        for (key, exp, sealed) in replies {
            let rec = record(key, *exp, sealed)?;
            placed.push((*key, recs.len() as u64, rec.len() as u32, *exp));
            recs.extend_from_slice(&rec);
        }
        let Some(exp_max) = placed.iter().map(|p| p.3).max() else { return Ok(()) };
        let mut st = self.state.lock().map_err(|_| std::io::Error::other("the spill index is poisoned"))?;
        let other = 1 - st.current;
        if st.slots[st.current].len >= ROTATE_BYTES && st.slots[other].last_exp < now {
            st.slots[other].file.set_len(0)?;
            st.slots[other].len = 0;
            st.slots[other].last_exp = i64::MIN;
            st.index.retain(|_, e| e.file != other);
            st.current = other;
        }
        let cur = st.current;
        let offset = st.slots[cur].len;
        // A failed write leaves `len` where it was: the next record goes over what it left.
        st.slots[cur].file.write_all_at(&recs, offset)?;
        st.slots[cur].len += recs.len() as u64;
        st.slots[cur].last_exp = st.slots[cur].last_exp.max(exp_max);
        for (key, at, len, exp) in placed {
            st.index.insert(key.to_string(), Entry { file: cur, offset: offset + at, len, exp });
        }
        Ok(())
    }

    /// The sealed reply kept for `key`, if it has not expired.
    pub(super) fn get(&self, key: &str, now: i64) -> Option<Vec<u8>> {
        let (entry, file) = {
            let st = self.state.lock().ok()?;
            let e = *st.index.get(key)?;
            (e, st.slots[e.file].file.clone())
        };
        if entry.exp <= now {
            return None;
        }
        let mut buf = vec![0u8; entry.len as usize];
        file.read_exact_at(&mut buf, entry.offset).ok()?;
        // The file may have been emptied and refilled since the index was read: the record
        // must be the one asked for.
        let (k, exp, sealed) = parse(buf.get(4..)?)?;
        (k == key && exp == entry.exp).then(|| sealed.to_vec())
    }

    /// Forget expired records (their bytes go when their file is emptied).
    pub(super) fn drop_expired(&self, now: i64) {
        if let Ok(mut st) = self.state.lock() {
            st.index.retain(|_, e| e.exp > now);
        }
    }

    /// Unexpired records indexed.
    pub(super) fn len(&self) -> usize {
        self.state.lock().map(|s| s.index.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(d: &tempfile::TempDir) -> [PathBuf; 2] {
        [d.path().join("a.spill"), d.path().join("b.spill")]
    }

    /// Replies written together (one write) are each found by their key, and after a reopen.
    #[test]
    fn replies_written_together_are_each_found() {
        let d = tempfile::tempdir().unwrap();
        let s = Spill::open(paths(&d), 100).unwrap();
        s.put("signer/j0", 300, b"first alone", 100).unwrap();
        let many: Vec<(String, Vec<u8>)> = (1..=5).map(|i| (format!("signer/j{i}"), format!("sealed {i}").repeat(i).into_bytes())).collect();
        let refs: Vec<(&str, i64, &[u8])> = many.iter().map(|(k, v)| (k.as_str(), 200 + k.len() as i64, v.as_slice())).collect();
        s.put_all(&refs, 100).unwrap();
        s.put_all(&[], 100).unwrap();
        for _ in 0..2 {
            for (k, v) in &many {
                assert_eq!(s.get(k, 120).as_deref(), Some(v.as_slice()), "{k}");
            }
            assert_eq!(s.get("signer/j0", 120).as_deref(), Some(&b"first alone"[..]));
            assert_eq!(s.len(), 6);
        }
        drop(s);
        let s = Spill::open(paths(&d), 100).unwrap();
        for (k, v) in &many {
            assert_eq!(s.get(k, 120).as_deref(), Some(v.as_slice()), "{k} after a reopen");
        }
    }

    #[test]
    fn records_are_found_by_key_kept_across_a_reopen_and_forgotten_once_expired() {
        let d = tempfile::tempdir().unwrap();
        let s = Spill::open(paths(&d), 100).unwrap();
        s.put("signer/j1", 200, b"sealed one", 100).unwrap();
        s.put("signer/j2", 150, b"sealed two", 100).unwrap();
        assert_eq!(s.get("signer/j1", 120).as_deref(), Some(&b"sealed one"[..]));
        assert_eq!(s.get("signer/j2", 120).as_deref(), Some(&b"sealed two"[..]));
        assert_eq!(s.get("signer/j3", 120), None);
        assert_eq!(s.get("signer/j2", 151), None, "expired");
        let mode = std::fs::metadata(&paths(&d)[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(s);

        // A reopen at 160 takes back j1 only.
        let s = Spill::open(paths(&d), 160).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("signer/j1", 160).as_deref(), Some(&b"sealed one"[..]));
        s.drop_expired(300);
        assert_eq!(s.len(), 0);
        assert_eq!(s.get("signer/j1", 160), None);
    }

    #[test]
    fn a_record_cut_short_by_a_crash_ends_the_file_and_the_next_goes_in_its_place() {
        let d = tempfile::tempdir().unwrap();
        let s = Spill::open(paths(&d), 100).unwrap();
        s.put("k/1", 200, b"first", 100).unwrap();
        s.put("k/2", 200, b"second", 100).unwrap();
        drop(s);
        let p = &paths(&d)[0];
        let whole = std::fs::metadata(p).unwrap().len();
        let f = OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(whole - 3).unwrap();
        let s = Spill::open(paths(&d), 100).unwrap();
        assert_eq!(s.get("k/1", 100).as_deref(), Some(&b"first"[..]));
        assert_eq!(s.get("k/2", 100), None, "the cut record is gone");
        s.put("k/3", 200, b"third", 100).unwrap();
        drop(s);
        let s = Spill::open(paths(&d), 100).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("k/3", 100).as_deref(), Some(&b"third"[..]));
    }

    #[test]
    fn the_files_take_turns_so_disk_holds_about_two_minutes_of_replies() {
        let d = tempfile::tempdir().unwrap();
        let s = Spill::open(paths(&d), 0).unwrap();
        let body = vec![7u8; 64 << 10];
        let size = |i: usize| std::fs::metadata(&paths(&d)[i]).map(|m| m.len()).unwrap_or(0);
        // One request lifetime's worth at t=0..: the first file fills past the mark.
        let per_file = (ROTATE_BYTES / body.len() as u64) as i64 + 1;
        for i in 0..per_file {
            s.put(&format!("k/{i}"), 120, &body, 0).unwrap();
        }
        assert!(size(0) >= ROTATE_BYTES);
        // The other file is empty (nothing unexpired in it): the next record goes there.
        s.put("k/next", 200, &body, 10).unwrap();
        assert!(size(1) > 0);
        // Now the first file's records are live (exp 120 > 50): the second grows past the mark
        // rather than emptying the first.
        for i in 0..per_file {
            s.put(&format!("m/{i}"), 200, &body, 50).unwrap();
        }
        assert!(size(1) >= ROTATE_BYTES && size(0) >= ROTATE_BYTES);
        assert!(s.get("k/0", 50).is_some(), "a live record was never dropped");
        // At 130 the first file's records expired: it is emptied and taken.
        s.put("late", 300, b"x", 130).unwrap();
        assert!(size(0) < 1024, "{}", size(0));
        assert_eq!(s.get("late", 130).as_deref(), Some(&b"x"[..]));
        assert_eq!(s.get("k/0", 50), None, "its records are forgotten with it");
        assert!(s.get("m/0", 130).is_some());
    }

    #[test]
    fn garbage_in_a_file_is_not_taken_for_records() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(&paths(&d)[0], [0xffu8; 100]).unwrap();
        std::fs::write(&paths(&d)[1], b"\x05\x00\x00\x00\x09\x00ab").unwrap();
        let s = Spill::open(paths(&d), 0).unwrap();
        assert_eq!(s.len(), 0);
        assert_eq!(std::fs::metadata(&paths(&d)[0]).unwrap().len(), 0, "cut at the first bad record");
        s.put("k", 10, b"v", 0).unwrap();
        assert_eq!(s.get("k", 0).as_deref(), Some(&b"v"[..]));
    }
}
