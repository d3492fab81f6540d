//! Durable state behind one small trait.
//!
//! [`Store`] is a key-value store with named spaces and atomic, durable batches. The embedded
//! backend is sled ([`SledStore`]); a JetStream KV backend for replicated control planes plugs in
//! behind the same trait. [`Vault`] layers sealing on top: values that are private keys or secrets
//! are sealed with the [`MasterKey`](crate::crypto::MasterKey), the record's `space/key` as
//! associated data, so a sealed value can be neither read without the key nor moved to another
//! record.

mod access;
mod copy;
mod jetstream;
mod sled_store;


pub use access::{permissions as access_permissions, StoreAccess};
pub use copy::{copy_all, verify, Copied};
pub use jetstream::{Connect, JetStreamStore};
pub use sled_store::SledStore;

use crate::crypto::{CryptoError, MasterKey};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Named key spaces. The string form is the on-disk prefix: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Estate-wide facts: trust domain, operator JWT, CA certificate, key-check record.
    Meta,
    /// Sealed private keys (nkey seeds, CA key).
    Keys,
    /// Account records (name → public key, current JWT).
    Accounts,
    /// Identity records (user public key → who, state, expiry).
    Identities,
    /// Join tokens (id → hash of the secret, target identity, state).
    Tokens,
    /// Service roles: one scoped signing key per service (`<account>/<project>/<service>`).
    Roles,
    /// Issued client certificates: serial → owner and expiry (for OCSP and the CRL).
    Serials,
    /// Secret metadata: path → readers and versions (never values).
    Secrets,
    /// Secret values, sealed: `<path>#<version>`.
    SecretValues,
    /// Sites (`site/<name>`) and their agents' progress (`agent/<user public key>`).
    Sites,
    /// Replies to changing requests, by signer and request id, until the request expires: a
    /// request retried after a lost reply gets the first reply (several replicas share them).
    Replies,
    /// Which identities a service has: `<tenant>/<project>/<env>/<service>/<user public key>`,
    /// written with each service identity's record (so listing one service's identities reads
    /// only them).
    ServiceIdentities,
    /// Every identity in the order `tillit list` shows them: `<SPIFFE id> <user public key>`,
    /// written with each identity's record (so a page of the list reads only its own records).
    IdentityOrder,
}

impl Space {
    /// Every space.
    pub const ALL: [Space; 13] = [
        Space::Meta,
        Space::Keys,
        Space::Accounts,
        Space::Identities,
        Space::Tokens,
        Space::Roles,
        Space::Serials,
        Space::Secrets,
        Space::SecretValues,
        Space::Sites,
        Space::Replies,
        Space::ServiceIdentities,
        Space::IdentityOrder,
    ];

    /// The space named `name` ([`Space::as_str`]).
    pub fn named(name: &str) -> Option<Space> {
        Space::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Keys => "keys",
            Space::Accounts => "accounts",
            Space::Identities => "identities",
            Space::Tokens => "tokens",
            Space::Roles => "roles",
            Space::Serials => "serials",
            Space::Secrets => "secrets",
            Space::SecretValues => "secret_values",
            Space::Sites => "sites",
            Space::Replies => "replies",
            Space::ServiceIdentities => "service_identities",
            Space::IdentityOrder => "identity_order",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path} is in use by another process (is `tillit serve` running on this data dir?)")]
    Locked { path: String },
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("record {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A compare-and-set write found the record changed by someone else (another replica).
    #[error("conflict: {0}")]
    Conflict(String),
}

/// One write of a batch: `None` deletes.
#[derive(Debug, Clone)]
pub struct Op {
    pub space: Space,
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// What the record must be for the write to land; `None`: as this process sees it when the
    /// batch is applied (enough for a write computed under the journal, which orders changes
    /// across replicas; not for a read-modify-write outside it).
    pub expect: Option<Expect>,
}

/// A value and the revision it is at (`None`: the backend keeps no revisions).
pub type Versioned = (Vec<u8>, Option<u64>);

/// The state a record must be in for a write to land ([`StoreError::Conflict`] otherwise).
/// A replicated store checks it against the bucket; a store of one process, whose writers hold
/// the estate's locks, has nothing to check it against that could differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The record does not exist (a create: another replica's create of the same record wins,
    /// this one is refused instead of overwriting it).
    Absent,
    /// The record is still at the revision it was read at ([`Store::get_rev`]).
    Revision(u64),
}

/// Writes applied together, all or nothing, and durable when [`Store::commit`] returns.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }
    pub fn put(&mut self, space: Space, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op { space, key: key.into(), value: Some(value.into()), expect: None });
        self
    }
    /// [`Batch::put_json`] that lands only if the record is as `expect` says.
    pub fn put_json_expect<T: serde::Serialize>(&mut self, space: Space, key: impl Into<String>, value: &T, expect: Option<Expect>) -> Result<&mut Self, StoreError> {
        self.put_json(space, key, value)?;
        if let Some(op) = self.ops.last_mut() {
            op.expect = expect;
        }
        Ok(self)
    }
    /// [`Batch::put_json`] of a record that must not exist yet ([`Expect::Absent`]).
    pub fn create_json<T: serde::Serialize>(&mut self, space: Space, key: impl Into<String>, value: &T) -> Result<&mut Self, StoreError> {
        self.put_json_expect(space, key, value, Some(Expect::Absent))
    }
    /// [`Batch::put_json`] of a record read at revision `rev` ([`Store::get_rev`]; `None`: the
    /// store keeps no revisions).
    pub fn put_json_at<T: serde::Serialize>(&mut self, space: Space, key: impl Into<String>, value: &T, rev: Option<u64>) -> Result<&mut Self, StoreError> {
        self.put_json_expect(space, key, value, rev.map(Expect::Revision))
    }
    pub fn put_json<T: serde::Serialize>(
        &mut self,
        space: Space,
        key: impl Into<String>,
        value: &T,
    ) -> Result<&mut Self, StoreError> {
        let v = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(self.put(space, key, v))
    }
    pub fn delete(&mut self, space: Space, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op { space, key: key.into(), value: None, expect: None });
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Append `other`'s writes (applied together with these).
    pub fn extend(&mut self, other: Batch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }
}

/// The storage contract every backend fulfils.
pub trait Store: Send + Sync + 'static {
    /// One value.
    fn get(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every `(key, value)` of a space, in key order.
    fn scan(&self, space: Space) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// How many records a space holds.
    fn count(&self, space: Space) -> Result<usize, StoreError>;
    /// How many records of a space have a key that starts with `prefix`.
    fn count_prefix(&self, space: Space, prefix: &str) -> Result<usize, StoreError> {
        Ok(self.scan_prefix(space, prefix)?.len())
    }
    /// Every `(key, value)` of a space whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, space: Space, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Visit `(key, value)` of a space whose key starts with `prefix`, in key order, until `f`
    /// says stop (false). sled streams (memory stays flat however large the space); the
    /// default reads the matching records first.
    fn visit_prefix(&self, space: Space, prefix: &str, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        for (k, v) in self.scan_prefix(space, prefix)? {
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
    /// Visit `(key, value)` of a space whose key starts with `prefix` and sorts after `after`,
    /// in key order, until `f` says stop (false): a page from its cursor without reading what
    /// comes before it (sled and the JetStream mirror seek; the default skips).
    fn visit_after(&self, space: Space, prefix: &str, after: &str, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        self.visit_prefix(space, prefix, &mut |k, v| k <= after || f(k, v))
    }
    /// Apply a batch atomically in memory; durable after the next [`sync`](Store::sync).
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Apply a batch's writes in order, not atomically: for callers that replay the whole batch
    /// after a crash (the audit journal, whose last write is its checkpoint). A backend's atomic
    /// batch may cost more (sled rolls its IO buffer twice per batch: two writes, two wake-ups).
    fn apply_in_order(&self, batch: Batch) -> Result<(), StoreError> {
        self.apply(batch)
    }
    /// Make every applied write durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// Replace `key`'s value if it is currently `old` (`None`: absent), atomically; false if it
    /// was not. Durable after the next [`sync`](Store::sync).
    fn compare_and_swap(&self, space: Space, key: &str, old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError>;
    /// One value with the revision it is at, read together (`None` revision: the backend keeps
    /// none, as a store of one process). A write that must not land over a change made since the
    /// read names that revision ([`Batch::put_json_at`]).
    fn get_rev(&self, space: Space, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.get(space, key)?.map(|v| (v, None)))
    }
    /// One value as the backend holds it now, not as a local copy last saw it (a replica whose
    /// watch lags reads the truth before acting on it). The same as [`Store::get`] in one process.
    fn get_fresh(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(space, key)
    }
    /// How many records other replicas changed since this store was opened (a counter: caches
    /// built from the store are stale once it moves). Always 0 for a store of one process.
    fn others_changes(&self) -> u64 {
        0
    }
    /// Compare-and-set writes refused so far because another replica wrote first.
    fn conflicts(&self) -> u64 {
        0
    }
    /// Whether the store can be reached now (a remote store's connection is up).
    fn reachable(&self) -> bool {
        true
    }
    /// The NATS connection of a store on JetStream.
    fn nats(&self) -> Option<async_nats::Client> {
        None
    }
    /// `sled` or `jetstream`.
    fn backend(&self) -> &'static str {
        "sled"
    }
    /// Every record of every space as of one instant: no write lands halfway through it, so
    /// what it holds is a state the store was in (a backup's records). In [`Space::ALL`] order,
    /// each space in key order. The default scans space by space, which is one instant only
    /// while nothing writes; both backends do better.
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Space::ALL.into_iter().map(|s| Ok((s, self.scan(s)?))).collect()
    }
    /// Apply a batch atomically; when this returns `Ok`, the batch is on stable storage.
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.apply(batch)?;
        self.sync()
    }
}

/// Every space's `(key, value)` records, as [`Store::snapshot`] returns them.
pub type Snapshot = Vec<(Space, Vec<(String, Vec<u8>)>)>;

/// Read a JSON record.
pub fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    space: Space,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match store.get(space, key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{}/{key}", space.as_str()), e.to_string())),
    }
}

/// [`get_json`] with the revision the record is at ([`Store::get_rev`]).
pub fn get_json_rev<T: serde::de::DeserializeOwned>(store: &dyn Store, space: Space, key: &str) -> Result<Option<(T, Option<u64>)>, StoreError> {
    match store.get_rev(space, key)? {
        None => Ok(None),
        Some((v, rev)) => serde_json::from_slice(&v)
            .map(|t| Some((t, rev)))
            .map_err(|e| StoreError::Corrupt(format!("{}/{key}", space.as_str()), e.to_string())),
    }
}

// === impl Vault ===

/// A store plus the master key: sealed reads and writes.
#[derive(Clone)]
pub struct Vault {
    store: Arc<dyn Store>,
    master: MasterKey,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

/// The associated data a sealed value of `space/key` is bound to.
pub(crate) fn aad(space: Space, key: &str) -> String {
    format!("{}/{key}", space.as_str())
}

impl Vault {
    /// A key for `label` derived from the master key ([`MasterKey::derive`]).
    pub fn derive_key(&self, label: &str) -> crate::crypto::MacKey {
        self.master.derive(label)
    }

    pub fn new(store: Arc<dyn Store>, master: MasterKey) -> Self {
        Vault { store, master }
    }
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
    /// The master key itself (to seal a file of the data dir).
    pub(crate) fn master(&self) -> &MasterKey {
        &self.master
    }
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    /// Add a sealed write to `batch`.
    pub fn put_sealed(&self, batch: &mut Batch, space: Space, key: &str, plaintext: &[u8]) -> Result<(), StoreError> {
        let sealed = self.master.seal(&aad(space, key), plaintext)?;
        batch.put(space, key, sealed);
        Ok(())
    }
    /// Read and open a sealed value.
    pub fn get_sealed(&self, space: Space, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match self.store.get(space, key)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.master.open(&aad(space, key), &v)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_seals_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let vault = Vault::new(store.clone(), MasterKey::generate().unwrap());
        let mut b = Batch::new();
        vault.put_sealed(&mut b, Space::Keys, "operator", b"SOAPLAINSEED").unwrap();
        b.put(Space::Meta, "trust_domain", "example.org");
        store.commit(b).unwrap();
        let raw = store.get(Space::Keys, "operator").unwrap().unwrap();
        assert!(!raw.windows(12).any(|w| w == b"SOAPLAINSEED"));
        assert_eq!(&vault.get_sealed(Space::Keys, "operator").unwrap().unwrap()[..], b"SOAPLAINSEED");
        assert!(vault.get_sealed(Space::Keys, "missing").unwrap().is_none());
        // The same bytes under another record key do not open.
        let mut b = Batch::new();
        b.put(Space::Keys, "account/SYS", raw);
        store.commit(b).unwrap();
        assert!(vault.get_sealed(Space::Keys, "account/SYS").is_err());
        // A vault with another master key cannot read.
        let other = Vault::new(store.clone(), MasterKey::generate().unwrap());
        assert!(other.get_sealed(Space::Keys, "operator").is_err());
    }
}
