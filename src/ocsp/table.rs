//! What a [`super::copy::Copy`] holds per serial, packed for estates of 100,000 certificates.
//!
//! A `HashMap<String, _>` cost ~150 bytes a serial there: the hex string on the heap, and a
//! table that doubles, so past 114,688 serials it was 262,144 slots of 65 bytes (17 MiB). Here
//! a serial is its bytes, inline, and the entries sit in one sorted vector of exactly their
//! number; changes go to a small map first and are merged into the vector once it holds an
//! eighth as many (one pass, linear). Lookups look in the map, then search the vector.

use std::collections::HashMap;

/// Longest serial held, in bytes: RFC 5280 caps a certificate's serial at 20 octets.
pub const MAX_SERIAL_BYTES: usize = 20;

/// A serial held by its bytes: `len` of `bytes` are used.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    len: u8,
    bytes: [u8; MAX_SERIAL_BYTES],
}

impl Key {
    /// A serial's key from its lowercase hex (the bucket's keys); `None` for anything else,
    /// which cannot be a serial tillit names.
    fn parse(hex: &str) -> Option<Key> {
        if hex.is_empty() || hex.len() > 2 * MAX_SERIAL_BYTES {
            return None;
        }
        let raw = data_encoding::HEXLOWER.decode(hex.as_bytes()).ok()?;
        let mut bytes = [0u8; MAX_SERIAL_BYTES];
        bytes[..raw.len()].copy_from_slice(&raw);
        Some(Key { len: raw.len() as u8, bytes })
    }

    fn hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.bytes[..self.len as usize])
    }
}

/// Serial → `V`, packed (see the module docs).
pub struct SerialTable<V> {
    /// Sorted by key, each key once.
    base: Vec<(Key, V)>,
    /// Changes not yet merged: `None` removes the key from `base`.
    delta: HashMap<Key, Option<V>>,
    len: usize,
}

impl<V> Default for SerialTable<V> {
    fn default() -> Self {
        SerialTable { base: Vec::new(), delta: HashMap::new(), len: 0 }
    }
}

/// Fewest changes held aside before a merge.
const MIN_DELTA: usize = 1024;

impl<V> SerialTable<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get_key(&self, k: &Key) -> Option<&V> {
        match self.delta.get(k) {
            Some(v) => v.as_ref(),
            None => self.base.binary_search_by(|(b, _)| b.cmp(k)).ok().map(|i| &self.base[i].1),
        }
    }

    pub fn get(&self, serial: &str) -> Option<&V> {
        self.get_key(&Key::parse(serial)?)
    }

    /// Hold `v` for `serial`; false (nothing held) if `serial` is not lowercase hex of at most
    /// [`MAX_SERIAL_BYTES`] bytes.
    pub fn insert(&mut self, serial: &str, v: V) -> bool {
        let Some(k) = Key::parse(serial) else { return false };
        if self.get_key(&k).is_none() {
            self.len += 1;
        }
        self.delta.insert(k, Some(v));
        self.maybe_merge();
        true
    }

    pub fn remove(&mut self, serial: &str) {
        let Some(k) = Key::parse(serial) else { return };
        if self.get_key(&k).is_none() {
            return;
        }
        self.len -= 1;
        if self.base.binary_search_by(|(b, _)| b.cmp(&k)).is_ok() {
            self.delta.insert(k, None);
        } else {
            self.delta.remove(&k);
        }
        self.maybe_merge();
    }

    fn maybe_merge(&mut self) {
        if self.delta.len() >= MIN_DELTA.max(self.base.len() / 8) {
            self.merge();
        }
    }

    /// Fold the changes into the vector: one pass, the new vector exactly as long as needed.
    fn merge(&mut self) {
        let mut changes: Vec<(Key, Option<V>)> = self.delta.drain().collect();
        changes.sort_unstable_by_key(|c| c.0);
        let mut out: Vec<(Key, V)> = Vec::with_capacity(self.len);
        let mut base = std::mem::take(&mut self.base).into_iter().peekable();
        for (k, v) in changes {
            while let Some((b, _)) = base.peek() {
                if *b >= k {
                    break;
                }
                out.extend(base.next());
            }
            if base.peek().is_some_and(|(b, _)| *b == k) {
                base.next();
            }
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        out.extend(base);
        out.shrink_to_fit();
        self.base = out;
    }

    /// Every serial held with its value, in no set order.
    pub fn iter(&self) -> impl Iterator<Item = (String, &V)> {
        let merged = self.base.iter().filter(|(k, _)| !self.delta.contains_key(k)).map(|(k, v)| (k, v));
        let changed = self.delta.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        merged.chain(changed).map(|(k, v)| (k.hex(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn serial(i: u32) -> String {
        // 16 bytes, like tillit's, spread over the key space.
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
        b[12..].copy_from_slice(&i.to_be_bytes());
        data_encoding::HEXLOWER.encode(&b)
    }

    /// Inserts, replacements and removals across many merges read back as a map would.
    #[test]
    fn reads_back_as_a_map_across_merges() {
        let (mut t, mut want) = (SerialTable::default(), BTreeMap::new());
        for round in 0..3u32 {
            for i in 0..10_000u32 {
                let s = serial(i);
                match (i + round) % 5 {
                    0 => {
                        t.remove(&s);
                        want.remove(&s);
                    }
                    _ => {
                        assert!(t.insert(&s, i + round));
                        want.insert(s, i + round);
                    }
                }
            }
            assert_eq!(t.len(), want.len(), "round {round}");
            for (s, v) in &want {
                assert_eq!(t.get(s), Some(v));
            }
            let got: BTreeMap<String, u32> = t.iter().map(|(k, v)| (k, *v)).collect();
            assert_eq!(got, want);
        }
        assert!(t.base.len() > 5_000 && t.base.capacity() == t.base.len(), "merged into an exact vector");
        assert_eq!(t.get(&serial(10_001)), None);
    }

    /// Short serials and the longest one RFC 5280 allows are held as given; anything that is
    /// not lowercase hex of at most 20 bytes is not.
    #[test]
    fn holds_serial_forms_exactly() {
        let mut t = SerialTable::default();
        let longest = "ab".repeat(MAX_SERIAL_BYTES);
        for s in ["00deadbeef", "01", longest.as_str()] {
            assert!(t.insert(s, 1));
            assert_eq!(t.get(s), Some(&1));
        }
        for s in ["", "0", "00DEADBEEF", "zz", "ab".repeat(MAX_SERIAL_BYTES + 1).as_str()] {
            assert!(!t.insert(s, 2), "{s:?}");
            assert_eq!(t.get(s), None);
        }
        assert_eq!(t.get("deadbeef"), None, "leading zeros are part of the serial");
        let mut keys: Vec<String> = t.iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, vec!["00deadbeef".to_string(), "01".into(), longest]);
        t.remove("01");
        t.remove("01");
        assert_eq!(t.len(), 2);
    }
}
