//! A responder's copy of the pre-signed OCSP answers ([`super::presign`]).
//!
//! The control plane publishes answers in the KV bucket `TILLIT_OCSP` (key: the certificate's
//! serial, lower-case hex; value: [`Published`], one DER answer per trusted CA). Every responder
//! follows the bucket's stream ([`super::follow`]) into a [`Copy`] and answers from it, so a
//! nats-server next to it admits and refuses certificates while the control plane is away.
//! A copy with a file is saved at most once a second and loaded at start: a site agent started
//! while its site is cut off from the hub still answers.
//!
//! An answer is served only for the CertID it was signed for, and only until its `nextUpdate`;
//! anything else gets no answer (HTTP 404), and nats-server asks the next responder the
//! certificate names.

use super::{read_answer, Answer, Status};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use crate::crypto::MacKey;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Largest value read from the bucket (a handful of answers of ~300 bytes).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// A value of the `TILLIT_OCSP` bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Published {
    /// DER answers, base64: one per CA of the trusted set when it was signed.
    pub answers: Vec<String>,
}

impl Published {
    pub fn new(ders: &[Vec<u8>]) -> Self {
        Published { answers: ders.iter().map(|d| data_encoding::BASE64.encode(d)).collect() }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse a bucket value; `None` if it is not one (too large, not JSON, not base64).
    pub fn parse(bytes: &[u8]) -> Option<Vec<(Answer, Vec<u8>)>> {
        if bytes.len() > MAX_VALUE_BYTES {
            return None;
        }
        let p: Published = serde_json::from_slice(bytes).ok()?;
        p.answers
            .iter()
            .map(|a| {
                let der = data_encoding::BASE64.decode(a.as_bytes()).ok()?;
                Some((read_answer(&der)?, der))
            })
            .collect()
    }
}

/// What the copy holds of one serial.
#[derive(Debug, Clone)]
pub struct Held {
    /// The bucket revision (stream sequence) it came from.
    pub revision: u64,
    /// The status the answers give (all say the same).
    status: Status,
    /// The earliest `nextUpdate` of the answers.
    next_update: i64,
    /// The answers, their DER and the raw bucket value: a full copy only ([`Copy::load_compact`]).
    full: Option<Box<Full>>,
}

#[derive(Debug, Clone)]
struct Full {
    answers: Vec<(Answer, Vec<u8>)>,
    /// The raw bucket value (saved as is).
    raw: Vec<u8>,
}

impl Held {
    /// The status the answers give (all say the same).
    pub fn status(&self) -> Status {
        self.status
    }

    /// The earliest `nextUpdate` of the answers.
    pub fn next_update(&self) -> i64 {
        self.next_update
    }
}

#[derive(Default)]
struct Inner {
    last_seq: u64,
    by_serial: super::table::SerialTable<Held>,
}

/// The copy: answers by serial, and how far into the bucket's stream it has read.
pub struct Copy {
    inner: RwLock<Inner>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
    /// Keep each serial's status only, not its signed answers, saved under a MAC by this key
    /// ([`Copy::load_compact`]).
    compact: Option<MacKey>,
}

impl std::fmt::Debug for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copy").field("file", &self.file).field("len", &self.len()).field("compact", &self.compact.is_some()).finish()
    }
}

/// The file form of a copy.
#[derive(Serialize, Deserialize)]
struct Saved {
    last_seq: u64,
    /// serial → [revision, bucket value as text] (a full copy)
    #[serde(default)]
    answers: HashMap<String, (u64, String)>,
    /// serial → [revision, revoked at (none: good), nextUpdate] (a compact copy)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    statuses: BTreeMap<String, (u64, Option<i64>, i64)>,
    /// A compact copy's MAC over `last_seq` and `statuses` ([`statuses_signed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// What a compact copy's file is MACed over. Unlike signed answers, a status in a file is only a
/// claim: whoever can write the data dir but holds no master key must not turn `revoked` into
/// `good`.
fn statuses_signed(last_seq: u64, statuses: &BTreeMap<String, (u64, Option<i64>, i64)>) -> Vec<u8> {
    serde_json::to_vec(&(last_seq, statuses)).unwrap_or_default()
}

impl Copy {
    /// An empty copy kept in memory only.
    pub fn in_memory() -> Self {
        Copy { inner: RwLock::new(Inner::default()), file: None, dirty: AtomicBool::new(false), compact: None }
    }

    /// A copy saved to `file`, loaded from it when it exists. A damaged file is set aside (the
    /// copy starts empty and reads the bucket again) with a warning.
    pub fn load(file: PathBuf) -> Self {
        Self::load_as(file, None)
    }

    /// [`Copy::load`] of a copy that keeps each serial's published status, revision and
    /// `nextUpdate` (~100 bytes) instead of its signed answers (~1.5 KiB): for the control plane,
    /// which holds the CA and signs each answer when asked ([`Copy::status`]), and whose copy
    /// grows with every certificate of the estate. [`Copy::answer`] answers nothing. The file is
    /// MACed under `key`: one that does not verify (tampered, or from before statuses) is not
    /// taken, and the bucket is read again.
    pub fn load_compact(file: PathBuf, key: MacKey) -> Self {
        Self::load_as(file, Some(key))
    }

    fn load_as(file: PathBuf, compact: Option<MacKey>) -> Self {
        let mut inner = Inner::default();
        match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                // A full copy cannot be made from a compact file: read the bucket again.
                Ok(saved) if compact.is_none() && !saved.statuses.is_empty() => {
                    tracing::info!(file = %file.display(), "OCSP answer copy holds statuses only; reading the bucket again");
                }
                Ok(saved)
                    if compact.as_ref().is_some_and(|k| {
                        !saved.answers.is_empty() || !saved.mac.as_deref().is_some_and(|m| k.verify_hex(&statuses_signed(saved.last_seq, &saved.statuses), m))
                    }) =>
                {
                    tracing::warn!(file = %file.display(), "OCSP status copy does not verify under this estate's master key; reading the bucket again");
                }
                Ok(saved) => {
                    inner.last_seq = saved.last_seq;
                    for (serial, (revision, raw)) in saved.answers {
                        Self::put_in(&mut inner, false, revision, &serial, Some(raw.as_bytes()));
                    }
                    for (serial, (revision, revoked, next_update)) in saved.statuses {
                        let status = revoked.map_or(Status::Good, Status::Revoked);
                        inner.by_serial.insert(&serial, Held { revision, status, next_update, full: None });
                    }
                    tracing::info!(file = %file.display(), answers = inner.by_serial.len(), last_seq = inner.last_seq, "OCSP answers loaded");
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), "OCSP answer copy is damaged ({e}); reading the bucket again");
                    let _ = std::fs::rename(&file, file.with_extension("damaged"));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %file.display(), "cannot read the OCSP answer copy: {e}"),
        }
        Copy { inner: RwLock::new(inner), file: Some(file), dirty: AtomicBool::new(false), compact }
    }

    /// The bucket stream sequence read up to.
    pub fn last_seq(&self) -> u64 {
        self.inner.read().map(|i| i.last_seq).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.by_serial.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the copy holds of `serial`.
    pub fn get(&self, serial: &str) -> Option<Held> {
        self.inner.read().ok()?.by_serial.get(serial).cloned()
    }

    /// Every serial held.
    pub fn serials(&self) -> Vec<String> {
        let Ok(i) = self.inner.read() else { return vec![] };
        i.by_serial.iter().map(|(k, _)| k).collect()
    }

    /// Take in the bucket message at stream sequence `seq` for `serial`: `Some(value)` is a put,
    /// `None` a delete. A value that does not parse is dropped (the serial then gets no answer).
    /// Sequences at or below what was read are ignored.
    pub fn apply(&self, seq: u64, serial: &str, value: Option<&[u8]>) {
        let Ok(mut i) = self.inner.write() else { return };
        if seq <= i.last_seq {
            return;
        }
        i.last_seq = seq;
        self.put(&mut i, seq, serial, value);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Take in a write the holder made (or read back) itself at `revision`, without moving how
    /// far the stream was read: the follower reads it again in order.
    pub fn note(&self, revision: u64, serial: &str, value: Option<&[u8]>) {
        let Ok(mut i) = self.inner.write() else { return };
        self.put(&mut i, revision, serial, value);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// [`Copy::note`] of an answer this holder just signed, whose status and earliest
    /// `nextUpdate` it knows: a compact copy holds them without reading the answers again.
    pub fn note_signed(&self, revision: u64, serial: &str, value: &[u8], status: Status, next_update: i64) {
        if self.compact.is_none() {
            return self.note(revision, serial, Some(value));
        }
        let Ok(mut i) = self.inner.write() else { return };
        if i.by_serial.get(serial).is_some_and(|h| h.revision >= revision) {
            return; // already holds something newer
        }
        i.by_serial.insert(serial, Held { revision, status, next_update, full: None });
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Drop what is held of `serial`.
    pub fn forget(&self, serial: &str) {
        if let Ok(mut i) = self.inner.write() {
            i.by_serial.remove(serial);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    fn put(&self, i: &mut Inner, seq: u64, serial: &str, value: Option<&[u8]>) {
        if i.by_serial.get(serial).is_some_and(|h| h.revision >= seq) {
            return; // already holds something newer
        }
        Self::put_in(i, self.compact.is_some(), seq, serial, value);
    }

    fn put_in(i: &mut Inner, compact: bool, seq: u64, serial: &str, value: Option<&[u8]>) {
        match value.and_then(|v| Some((Published::parse(v)?, v))) {
            Some((answers, raw)) if !answers.is_empty() && answers.iter().all(|(a, _)| a.serial_hex == serial) => {
                let status = answers[0].0.status;
                let next_update = answers.iter().map(|(a, _)| a.next_update).min().unwrap_or(0);
                let full = (!compact).then(|| Box::new(Full { answers, raw: raw.to_vec() }));
                i.by_serial.insert(serial, Held { revision: seq, status, next_update, full });
            }
            Some((answers, _)) if !answers.is_empty() => {
                tracing::warn!(serial, "an OCSP answer in the bucket names another serial; dropped");
                i.by_serial.remove(serial);
            }
            _ => {
                if value.is_some() {
                    tracing::warn!(serial, seq, "an OCSP answer in the bucket does not parse; dropped");
                }
                i.by_serial.remove(serial);
            }
        }
    }

    /// Forget everything (the bucket was made anew).
    pub fn reset(&self) {
        if let Ok(mut i) = self.inner.write() {
            *i = Inner::default();
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// The DER answer to an OCSP request, if the copy holds one for exactly that CertID that
    /// is still current at `now`.
    pub fn answer(&self, request_der: &[u8], now: i64) -> Option<Vec<u8>> {
        let id = super::requested(request_der)?;
        let serial = data_encoding::HEXLOWER.encode(id.serial_number.as_bytes());
        let i = self.inner.read().ok()?;
        let held = i.by_serial.get(&serial)?;
        held.full
            .as_ref()?
            .answers
            .iter()
            .find(|(a, _)| {
                a.hash_oid == id.hash_algorithm.oid
                    && a.issuer_name_hash == id.issuer_name_hash.as_bytes()
                    && a.issuer_key_hash == id.issuer_key_hash.as_bytes()
                    && a.next_update > now
            })
            .map(|(_, der)| der.clone())
    }

    /// The status published for `serial`, while its answers are current at `now`: what a
    /// compact copy's holder signs when asked ([`Copy::load_compact`]).
    pub fn status(&self, serial: &str, now: i64) -> Option<Status> {
        let i = self.inner.read().ok()?;
        i.by_serial.get(serial).filter(|h| h.next_update > now).map(|h| h.status)
    }

    /// Write the copy to its file if it changed since the last save.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let saved = {
            let Ok(i) = self.inner.read() else { return };
            let mut saved = Saved { last_seq: i.last_seq, answers: HashMap::new(), statuses: BTreeMap::new(), mac: None };
            for (k, h) in i.by_serial.iter() {
                match (&h.full, h.status) {
                    (Some(f), _) => {
                        saved.answers.insert(k, (h.revision, String::from_utf8_lossy(&f.raw).into_owned()));
                    }
                    (None, Status::Good) => {
                        saved.statuses.insert(k, (h.revision, None, h.next_update));
                    }
                    (None, Status::Revoked(at)) => {
                        saved.statuses.insert(k, (h.revision, Some(at), h.next_update));
                    }
                    (None, Status::Unknown) => {}
                }
            }
            saved.mac = self.compact.as_ref().map(|k| k.mac_hex(&statuses_signed(saved.last_seq, &saved.statuses)));
            saved
        };
        let bytes = match serde_json::to_vec(&saved) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(e) = write_atomic(file, &bytes, 0o600) {
            self.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(file = %file.display(), "cannot save the OCSP answer copy: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::x509::CertAuthority;

    fn ca() -> CertAuthority {
        let root = CertAuthority::generate("example.org", 1_780_000_000, 1_790_000_000).unwrap();
        CertAuthority::load(&root.cert_pem, &root.key_pem).unwrap()
    }

    #[test]
    fn answers_only_the_certid_it_was_signed_for_and_only_while_current() {
        let ca = ca();
        let other = CertAuthority::generate("other.org", 1_780_000_000, 1_790_000_000).unwrap();
        let other = CertAuthority::load(&other.cert_pem, &other.key_pem).unwrap();
        let serial = "4a1b2c3d4e5f60718293a4b5c6d7e8f9";
        let ders = super::super::presign(std::slice::from_ref(&ca), serial, Status::Good, 1_780_000_000, 1_780_086_400);
        assert_eq!(ders.len(), 1);
        let copy = Copy::in_memory();
        copy.apply(7, serial, Some(&Published::new(&ders).to_bytes()));
        assert_eq!(copy.get(serial).unwrap().status(), Status::Good);
        // A request as Go's ocsp.CreateRequest makes it (SHA-1 CertID) for that serial.
        let req = |ca: &CertAuthority, serial: &str| super::super::tests::request_for(ca, serial);
        assert!(copy.answer(&req(&ca, serial), 1_780_000_100).is_some());
        assert!(copy.answer(&req(&ca, serial), 1_780_086_401).is_none(), "past nextUpdate");
        assert!(copy.answer(&req(&other, serial), 1_780_000_100).is_none(), "another issuer");
        assert!(copy.answer(&req(&ca, "01"), 1_780_000_100).is_none(), "another serial");
        assert!(copy.answer(b"garbage", 1_780_000_100).is_none());
        // A revocation replaces the answer; an older sequence changes nothing; a delete drops it.
        let revoked = super::super::presign(std::slice::from_ref(&ca), serial, Status::Revoked(1_780_000_050), 1_780_000_050, 1_780_086_400);
        // A full copy keeps what it signs as it keeps what it reads: the answers themselves.
        let signer = Copy::in_memory();
        signer.note_signed(7, serial, &Published::new(&ders).to_bytes(), Status::Good, 0);
        assert!(signer.answer(&req(&ca, serial), 1_780_000_100).is_some(), "a full copy noted a signed answer with its DER");
        assert_eq!(signer.get(serial).map(|h| h.next_update()), Some(1_780_086_400), "read from the answer, not as said");
        copy.apply(9, serial, Some(&Published::new(&revoked).to_bytes()));
        copy.apply(8, serial, Some(&Published::new(&ders).to_bytes()));
        assert_eq!(copy.get(serial).unwrap().status(), Status::Revoked(1_780_000_050));
        copy.apply(10, serial, None);
        assert!(copy.get(serial).is_none());
        // A value for another serial under this key is not taken.
        copy.apply(11, "01", Some(&Published::new(&ders).to_bytes()));
        assert!(copy.get("01").is_none());
        assert_eq!(copy.last_seq(), 11);
    }

    /// The control plane's copy keeps each serial's status, not its answers: it says what was
    /// published while the answers are current, answers nothing itself, and saves and loads
    /// statuses (a full copy does not take a file of statuses).
    #[test]
    fn a_compact_copy_keeps_statuses_saves_them_and_answers_nothing_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ocsp.json");
        let ca = ca();
        let good = super::super::presign(std::slice::from_ref(&ca), "0a0b", Status::Good, 1_780_000_000, 1_780_086_400);
        let revoked = super::super::presign(std::slice::from_ref(&ca), "0c0d", Status::Revoked(1_780_000_010), 1_780_000_010, 1_780_086_400);
        let key = || crate::crypto::MasterKey::generate().unwrap().derive("ocsp statuses");
        let k = key();
        let copy = Copy::load_compact(file.clone(), k.clone());
        copy.apply(3, "0a0b", Some(&Published::new(&good).to_bytes()));
        copy.apply(4, "0c0d", Some(&Published::new(&revoked).to_bytes()));
        copy.apply(5, "0e0f", Some(b"not an answer"));
        // An answer its holder signed is noted as said, with no second read; an older one changes nothing.
        let fresh = super::super::presign(std::slice::from_ref(&ca), "1a1b", Status::Good, 1_780_000_000, 1_780_050_000);
        copy.note_signed(2, "1a1b", &Published::new(&fresh).to_bytes(), Status::Good, 1_780_050_000);
        copy.note_signed(1, "1a1b", &Published::new(&fresh).to_bytes(), Status::Revoked(1), 1);
        assert_eq!(copy.get("1a1b").map(|h| (h.revision, h.status(), h.next_update())), Some((2, Status::Good, 1_780_050_000)));
        copy.forget("1a1b");
        assert_eq!(copy.status("0a0b", 1_780_000_100), Some(Status::Good));
        assert_eq!(copy.status("0c0d", 1_780_000_100), Some(Status::Revoked(1_780_000_010)));
        assert_eq!(copy.status("0a0b", 1_780_086_400), None, "not past nextUpdate");
        assert_eq!(copy.status("0e0f", 1_780_000_100), None);
        let req = super::super::tests::request_for(&ca, "0a0b");
        assert!(copy.answer(&req, 1_780_000_100).is_none(), "a compact copy holds no signed answer");
        copy.save();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("MII") && text.len() < 300, "statuses only: {text}");
        let again = Copy::load_compact(file.clone(), k.clone());
        assert_eq!((again.last_seq(), again.len()), (5, 2));
        assert_eq!(again.get("0c0d").map(|h| (h.revision, h.status(), h.next_update())), Some((4, Status::Revoked(1_780_000_010), 1_780_086_400)));
        let full = Copy::load(file.clone());
        assert_eq!((full.last_seq(), full.len()), (0, 0), "a full copy reads the bucket again");
        // Someone with the data dir but not the master key turns `revoked` into `good`: the file
        // does not verify and is not taken; nor is it under another estate's key.
        let forged = text.replace("[4,1780000010,1780086400]", "[4,null,1780086400]");
        assert_ne!(forged, text, "{text}");
        std::fs::write(&file, &forged).unwrap();
        let tampered = Copy::load_compact(file.clone(), k.clone());
        assert_eq!((tampered.last_seq(), tampered.len()), (0, 0), "a tampered file is not taken");
        std::fs::write(&file, &text).unwrap();
        let foreign = Copy::load_compact(file.clone(), key());
        assert_eq!((foreign.last_seq(), foreign.len()), (0, 0), "another key's file is not taken");
        // A file of signed answers from before statuses is read again from the bucket too.
        let old = Copy::load(dir.path().join("full.json"));
        old.apply(3, "0a0b", Some(&Published::new(&good).to_bytes()));
        old.save();
        let upgraded = Copy::load_compact(dir.path().join("full.json"), k);
        assert_eq!((upgraded.last_seq(), upgraded.len()), (0, 0));
    }

    #[test]
    fn a_saved_copy_loads_and_a_damaged_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ocsp.json");
        let ca = ca();
        let ders = super::super::presign(std::slice::from_ref(&ca), "0a0b", Status::Good, 1_780_000_000, 1_780_086_400);
        let copy = Copy::load(file.clone());
        copy.apply(3, "0a0b", Some(&Published::new(&ders).to_bytes()));
        copy.save();
        let again = Copy::load(file.clone());
        assert_eq!(again.last_seq(), 3);
        assert_eq!(again.get("0a0b").unwrap().status(), Status::Good);
        std::fs::write(&file, b"{not json").unwrap();
        let damaged = Copy::load(file.clone());
        assert!(damaged.is_empty());
        assert_eq!(damaged.last_seq(), 0);
        assert!(file.with_extension("damaged").exists());
    }
}
