//! The embedded sled backend: one tree, keys prefixed `space/`, batches applied atomically and
//! flushed (fsync) before `commit` returns.
//!
//! sled's iterators are not snapshots, so writes pass a gate (a read lock, uncontended but for a
//! snapshot) and [`Store::snapshot`] closes it (the write lock) while it reads every record: a
//! backup taken while `serve` runs sees the store as it was at one instant.

use super::{Batch, Snapshot, Space, Store, StoreError};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The page cache sled may hold in memory.
const SLED_CACHE_BYTES: u64 = 16 << 20;

/// sled under `DATA/store`.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    /// Writes hold it shared, a snapshot exclusively.
    gate: Arc<RwLock<()>>,
}

fn full_key(space: Space, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(space.as_str().len() + 1 + key.len());
    k.extend_from_slice(space.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Backend("the store's write gate is poisoned (a writer panicked)".into())
}

impl SledStore {
    /// Open (or create) the store in `dir`. A second process on the same dir gets
    /// [`StoreError::Locked`]. sled lets go of its file lock shortly after the last handle is
    /// dropped (its background threads finish first), so a lock is retried for up to a second.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match Self::open_once(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// sled's page cache: its default (1 GiB) let `serve`'s memory grow with the estate. The
    /// hot records (accounts, roles, recent identities) fit in a few MiB.
    fn open_once(dir: &Path) -> Result<Self, StoreError> {
        // Durability is explicit (`sync`, group-committed), so no background flusher.
        match sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).flush_every_ms(None).cache_capacity(SLED_CACHE_BYTES).open() {
            Ok(db) => Ok(SledStore { db, gate: Arc::default() }),
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(11) => {
                Err(StoreError::Locked { path: dir.display().to_string() })
            }
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("lock") || msg.contains("WouldBlock") || msg.contains("temporarily unavailable") {
                    Err(StoreError::Locked { path: dir.display().to_string() })
                } else {
                    Err(StoreError::Backend(msg))
                }
            }
        }
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(full_key(space, key)).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan(&self, space: Space) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_prefix(space, "")
    }

    fn scan_prefix(&self, space: Space, key_prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        self.visit_prefix(space, key_prefix, &mut |k, v| {
            out.push((k.to_string(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    fn visit_prefix(&self, space: Space, key_prefix: &str, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        let base = full_key(space, "").len();
        for item in self.db.scan_prefix(full_key(space, key_prefix)) {
            let (k, v) = item.map_err(backend)?;
            if !f(&String::from_utf8_lossy(&k[base..]), &v) {
                break;
            }
        }
        Ok(())
    }

    fn visit_after(&self, space: Space, key_prefix: &str, after: &str, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        use std::ops::Bound;
        let base = full_key(space, "").len();
        let prefix = full_key(space, key_prefix);
        let from = full_key(space, after);
        let start = if from.as_slice() < prefix.as_slice() { Bound::Included(prefix.clone()) } else { Bound::Excluded(from) };
        for item in self.db.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(&prefix) || !f(&String::from_utf8_lossy(&k[base..]), &v) {
                break;
            }
        }
        Ok(())
    }

    fn count(&self, space: Space) -> Result<usize, StoreError> {
        self.count_prefix(space, "")
    }

    fn count_prefix(&self, space: Space, prefix: &str) -> Result<usize, StoreError> {
        let prefix = full_key(space, prefix);
        let mut n = 0;
        for item in self.db.scan_prefix(&prefix).keys() {
            item.map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let _open = self.gate.read().map_err(poisoned)?;
        // One write is atomic by itself. sled's `apply_batch` seals its log buffer and hands a
        // write to its thread pool every time (`pin_log`), which cost a site agent's
        // acknowledgement (one status record) more CPU than the rest of its handling.
        if let [op] = batch.ops.as_slice() {
            let key = full_key(op.space, &op.key);
            return match &op.value {
                Some(v) => self.db.insert(key, v.as_slice()).map(|_| ()),
                None => self.db.remove(key).map(|_| ()),
            }
            .map_err(backend);
        }
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op.value {
                Some(v) => b.insert(full_key(op.space, &op.key), v),
                None => b.remove(full_key(op.space, &op.key)),
            }
        }
        self.db.apply_batch(b).map_err(backend)
    }

    fn apply_in_order(&self, batch: Batch) -> Result<(), StoreError> {
        // sled recovers a prefix of its log, so after a crash the store holds some leading part
        // of these writes; the journal replays from its checkpoint, the last write here.
        let _open = self.gate.read().map_err(poisoned)?;
        for op in batch.ops {
            match op.value {
                Some(v) => self.db.insert(full_key(op.space, &op.key), v).map(|_| ()),
                None => self.db.remove(full_key(op.space, &op.key)).map(|_| ()),
            }
            .map_err(backend)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    fn compare_and_swap(&self, space: Space, key: &str, old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let _open = self.gate.read().map_err(poisoned)?;
        let r = self.db.compare_and_swap(full_key(space, key), old, new).map_err(backend)?;
        Ok(r.is_ok())
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let _closed = self.gate.write().map_err(poisoned)?;
        Space::ALL.into_iter().map(|s| Ok((s, self.scan(s)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_visible_durable_and_scoped_by_space() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Space::Accounts, "acme-prod", "1").put(Space::Accounts, "globex-prod", "2").put(Space::Meta, "x", "3");
            s.commit(b).unwrap();
            assert_eq!(s.count(Space::Accounts).unwrap(), 2);
            assert_eq!(s.count(Space::Identities).unwrap(), 0);
            let mut b = Batch::new();
            b.delete(Space::Accounts, "acme-prod");
            s.commit(b).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.count(Space::Accounts).unwrap(), 1, "the one-write delete lasted");
        // One write takes the plain insert/remove path (no sled batch): visible, then durable.
        let one = |b: &mut Batch| std::mem::take(b);
        let mut b = Batch::new();
        b.put(Space::Sites, "agent/U1", "status");
        s.apply(one(&mut b)).unwrap();
        assert_eq!(s.get(Space::Sites, "agent/U1").unwrap().as_deref(), Some(&b"status"[..]));
        b.put(Space::Sites, "agent/U2", "gone soon");
        s.apply(one(&mut b)).unwrap();
        b.delete(Space::Sites, "agent/U2");
        s.apply(one(&mut b)).unwrap();
        assert_eq!(s.get(Space::Sites, "agent/U2").unwrap(), None);
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.scan(Space::Sites).unwrap(), vec![("agent/U1".to_string(), b"status".to_vec())], "after a reopen");
        assert!(s.compare_and_swap(Space::Tokens, "t1", None, Some(b"unused".to_vec())).unwrap());
        assert!(!s.compare_and_swap(Space::Tokens, "t1", None, Some(b"again".to_vec())).unwrap());
        assert!(s.compare_and_swap(Space::Tokens, "t1", Some(b"unused"), Some(b"used".to_vec())).unwrap());
        assert!(!s.compare_and_swap(Space::Tokens, "t1", Some(b"unused"), Some(b"used".to_vec())).unwrap());
        let mut b = Batch::new();
        b.put(Space::Roles, "acme-prod/shop/orders", "r1").put(Space::Roles, "acme-prod/shop/pay", "r2").put(Space::Roles, "acme-test/shop/orders", "r3");
        s.commit(b).unwrap();
        let keys: Vec<String> = s.scan_prefix(Space::Roles, "acme-prod/").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["acme-prod/shop/orders", "acme-prod/shop/pay"]);
        let all = s.scan(Space::Accounts).unwrap();
        assert_eq!(all, vec![("globex-prod".to_string(), b"2".to_vec())]);
        assert_eq!(s.get(Space::Meta, "x").unwrap().unwrap(), b"3");
    }

    #[test]
    fn a_visit_after_a_cursor_seeks_and_keeps_to_its_prefix_and_space() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::new();
        for k in ["a 1", "b 1", "b 2", "b 3", "c 1"] {
            b.put(Space::IdentityOrder, k, "1");
        }
        b.put(Space::Identities, "b 9", "other space");
        s.commit(b).unwrap();
        let visit = |prefix: &str, after: &str, stop_after: usize| {
            let mut seen = vec![];
            s.visit_after(Space::IdentityOrder, prefix, after, &mut |k, _| {
                seen.push(k.to_string());
                seen.len() < stop_after
            })
            .unwrap();
            seen
        };
        assert_eq!(visit("", "", 99), ["a 1", "b 1", "b 2", "b 3", "c 1"], "from the first");
        assert_eq!(visit("", "b 1", 99), ["b 2", "b 3", "c 1"], "strictly after the cursor");
        assert_eq!(visit("", "b", 99), ["b 1", "b 2", "b 3", "c 1"], "a cursor between keys");
        assert_eq!(visit("", "b 2", 1), ["b 3"], "until told to stop");
        assert_eq!(visit("b ", "", 99), ["b 1", "b 2", "b 3"], "a cursor before the prefix starts at it");
        assert_eq!(visit("b ", "b 2", 99), ["b 3"], "and never past it");
        assert!(visit("", "c 1", 99).is_empty(), "nothing after the last; nor the next space");
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_locked() {
        // sled's file lock is per process, so the second opener runs as a child process.
        let dir = tempfile::tempdir().unwrap();
        let _s = SledStore::open(dir.path()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "store::sled_store::tests::child_open_probe", "--nocapture", "--include-ignored"])
            .env("TILLIT_PROBE_DIR", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("PROBE: locked"), "child said: {text}");
    }

    #[test]
    #[ignore = "run as a child process by a_second_opener_is_told_the_store_is_locked"]
    fn child_open_probe() {
        if let Ok(dir) = std::env::var("TILLIT_PROBE_DIR") {
            match SledStore::open(Path::new(&dir)) {
                Err(StoreError::Locked { .. }) => println!("PROBE: locked"),
                Err(e) => println!("PROBE: other error {e}"),
                Ok(_) => println!("PROBE: opened"),
            }
        }
    }
}
