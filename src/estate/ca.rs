//! The CA set: the issuing CA and the others still trusted, rotated with overlap.
//!
//! `rotate ca` runs in three steps, each recorded in `meta/cas`:
//! 1. **add** — a new CA (`next`) joins the bundle (current + next); every party learns the
//!    bundle (the hub's `ca_file` is rewritten and reloaded, sites get `ca.rotated`, services get
//!    it at their next renewal) while issuance stays on the current CA;
//! 2. **switch** — once every site acknowledged the bundle, `next` becomes `current` and issues
//!    from then on; the old CA becomes `previous` with `retire_at` = the latest expiry of any
//!    certificate it issued (client certificates, bootstrap certificates of unused tokens, site
//!    servers, the control plane's own);
//! 3. **retire** — after `retire_at`, the hub's server certificate is re-issued by the current CA
//!    and the old CA leaves the bundle.
//!
//! No step makes a party distrust a certificate it may still be shown.

use super::*;

/// State of one CA in the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaState {
    /// Issues certificates.
    Current,
    /// In the bundle, not issuing yet.
    Next,
    /// In the bundle until `retire_at`, no longer issuing.
    Previous,
    /// Out of the bundle (kept for the record).
    Retired,
}

/// One CA (`meta/cas`); its key is sealed under `keys/<key_ref>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaRecord {
    pub fingerprint: String,
    pub cert_pem: String,
    pub state: CaState,
    pub created_at: i64,
    pub key_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<i64>,
}

impl CaRecord {
    /// A previous CA whose retirement time has come by `now`.
    pub fn retires_by(&self, now: i64) -> bool {
        self.state == CaState::Previous && self.retire_at.is_some_and(|t| t <= now)
    }

    /// The CA `init` made (before any rotation, the only one).
    fn initial(meta: &EstateMeta) -> Self {
        CaRecord {
            fingerprint: meta.ca_fingerprint.clone(),
            cert_pem: meta.ca_cert_pem.clone(),
            state: CaState::Current,
            created_at: meta.created_at,
            key_ref: "ca".into(),
            retire_at: None,
            switched_at: None,
        }
    }
}

/// Open the signing half of each CA (keys from the vault).
fn authorities(vault: &Vault, records: &[CaRecord], config: &Config) -> Result<Vec<Arc<CertAuthority>>> {
    let mut cas = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let key = vault.get_sealed(Space::Keys, &r.key_ref)?.ok_or_else(|| EstateError::Key("CA".into(), format!("no key {}", r.key_ref)))?;
        let key = SecretString::new(String::from_utf8_lossy(&key).into_owned());
        // The CA of `init` keeps the plain `/crl` URL its certificates already carry.
        let fp = (i > 0 || r.key_ref != "ca").then_some(r.fingerprint.as_str());
        cas.push(Arc::new(CertAuthority::load(&r.cert_pem, &key)?.with_revocation_urls(revocation_urls_for(config, fp))));
    }
    Ok(cas)
}

/// The CAs as loaded: records and their signing halves.
pub struct CaSet {
    pub records: Vec<CaRecord>,
    cas: Vec<Arc<CertAuthority>>,
}

impl std::fmt::Debug for CaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSet").field("records", &self.records).finish_non_exhaustive()
    }
}

impl CaSet {
    /// The single CA of a new estate.
    pub(crate) fn initial(meta: &EstateMeta, ca: CertAuthority) -> Self {
        CaSet { records: vec![CaRecord::initial(meta)], cas: vec![Arc::new(ca)] }
    }

    fn current(&self) -> Option<(&CaRecord, &Arc<CertAuthority>)> {
        self.records.iter().zip(self.cas.iter()).find(|(r, _)| r.state == CaState::Current)
    }
    /// CAs in the bundle: current first, then next, then previous.
    fn trusted(&self) -> Vec<(&CaRecord, &Arc<CertAuthority>)> {
        let mut v: Vec<_> = self.records.iter().zip(self.cas.iter()).filter(|(r, _)| r.state != CaState::Retired).collect();
        v.sort_by_key(|(r, _)| match r.state {
            CaState::Current => 0,
            CaState::Next => 1,
            _ => 2,
        });
        v
    }
}

pub(super) const META_CAS: &str = "cas";

/// The short id of a CA in URLs (`/crl/<id>`): the first 16 hex digits of its fingerprint.
pub fn ca_url_id(fingerprint: &str) -> String {
    fingerprint.trim_start_matches("sha256:").chars().take(16).collect()
}

pub(crate) fn revocation_urls_for(config: &Config, fingerprint: Option<&str>) -> x509::RevocationUrls {
    let bases = config.responder_urls();
    x509::RevocationUrls {
        ocsp: config.ocsp_urls().iter().map(|b| format!("{b}/ocsp")).collect(),
        crl: bases
            .iter()
            .map(|b| match fingerprint {
                Some(fp) => format!("{b}/crl/{}", ca_url_id(fp)),
                None => format!("{b}/crl"),
            })
            .collect(),
    }
}

impl Estate {
    /// Load the CA set (the single CA of `init` when no rotation happened yet).
    pub(crate) fn load_cas(vault: &Vault, meta: &EstateMeta, config: &Config) -> Result<CaSet> {
        let records: Vec<CaRecord> = get_json(vault.store(), Space::Meta, META_CAS)?.unwrap_or_else(|| vec![CaRecord::initial(meta)]);
        let cas = authorities(vault, &records, config)?;
        Ok(CaSet { records, cas })
    }

    fn cas(&self) -> std::sync::RwLockReadGuard<'_, CaSet> {
        self.cas.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The issuing CA.
    pub fn ca(&self) -> Arc<CertAuthority> {
        let set = self.cas();
        set.current().map(|(_, c)| c.clone()).unwrap_or_else(|| set.cas[0].clone())
    }

    /// Every CA still trusted (for OCSP and CRLs), with its record.
    pub fn trusted_cas(&self) -> Vec<(CaRecord, Arc<CertAuthority>)> {
        self.cas().trusted().into_iter().map(|(r, c)| (r.clone(), c.clone())).collect()
    }

    /// The CA records.
    pub fn ca_records(&self) -> Vec<CaRecord> {
        self.cas().records.clone()
    }

    /// The CA bundle parties trust (PEM, the issuing CA first).
    pub fn ca_bundle_pem(&self) -> String {
        let mut out = String::new();
        for (r, _) in self.cas().trusted() {
            out.push_str(r.cert_pem.trim_end());
            out.push('\n');
        }
        out
    }

    /// Fingerprint of the issuing CA (what new identities pin).
    pub fn ca_fingerprint(&self) -> String {
        self.cas().current().map(|(r, _)| r.fingerprint.clone()).unwrap_or_else(|| self.meta.ca_fingerprint.clone())
    }

    fn store_cas(&self, records: Vec<CaRecord>, extra: Batch) -> Result<()> {
        let mut b = extra;
        b.put_json(Space::Meta, META_CAS, &records)?;
        self.store().commit(b)?;
        let cas = authorities(&self.vault, &records, &self.config)?;
        if let Ok(mut g) = self.cas.write() {
            *g = CaSet { records, cas };
        }
        Ok(())
    }

    /// Rotation step 1: a `next` CA in the bundle (the existing one if a rotation is under way,
    /// with no batch). The batch holds its sealed key and the new CA records: the caller commits
    /// it with its audit record, then calls [`Estate::reload_caches`].
    pub fn next_ca(&self) -> Result<(CaRecord, Option<Batch>)> {
        let mut records = self.ca_records();
        if let Some(n) = records.iter().find(|r| r.state == CaState::Next) {
            return Ok((n.clone(), None));
        }
        if records.iter().any(|r| r.state == CaState::Previous) {
            return Err(EstateError::Conflict(
                "a previous CA is still trusted (its certificates have not all expired); finish that rotation first".into(),
            ));
        }
        let now = self.clock.now_unix();
        let generation = records.len() + 1;
        let issued = CertAuthority::generate_named(&self.config.trust_domain, &format!("gen {generation}"), now, now + self.config.ca_ttl.as_secs() as i64)?;
        let fingerprint = x509::fingerprint(&issued.cert_pem)?;
        let key_ref = format!("ca/{}", ca_url_id(&fingerprint));
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &key_ref, issued.key_pem.expose().as_bytes())?;
        let rec = CaRecord { fingerprint, cert_pem: issued.cert_pem, state: CaState::Next, created_at: now, key_ref, retire_at: None, switched_at: None };
        records.push(rec.clone());
        b.put_json(Space::Meta, META_CAS, &records)?;
        Ok((rec, Some(b)))
    }

    /// Rotation step 2: `next` issues from now on; the old CA stays trusted until `retire_at`.
    pub fn switch_ca(&self, retire_at: i64) -> Result<CaRecord> {
        let now = self.clock.now_unix();
        let mut records = self.ca_records();
        let next = records.iter().position(|r| r.state == CaState::Next).ok_or_else(|| EstateError::Key("CA".into(), "no next CA to switch to".into()))?;
        for r in records.iter_mut() {
            if r.state == CaState::Current {
                r.state = CaState::Previous;
                r.retire_at = Some(retire_at);
            }
        }
        records[next].state = CaState::Current;
        records[next].switched_at = Some(now);
        let rec = records[next].clone();
        self.store_cas(records, Batch::new())?;
        Ok(rec)
    }

    /// Rotation step 3: previous CAs whose certificates have all expired leave the bundle.
    /// Returns the fingerprints retired.
    /// Whether a server certificate may come from the current CA now: every client trusts it
    /// (no rotation in progress, or the old CA's client certificates have all expired).
    pub fn server_issuance_open(&self) -> bool {
        let now = self.clock.now_unix();
        self.ca_records().iter().all(|r| r.state != CaState::Previous || r.retires_by(now))
    }

    /// Bring the retirement of previous CAs forward to now (`rotate ca --finish`).
    pub fn finish_ca_rotation(&self) -> Result<Vec<String>> {
        let now = self.clock.now_unix();
        let mut records = self.ca_records();
        let mut out = Vec::new();
        for r in records.iter_mut() {
            if r.state == CaState::Previous && !r.retires_by(now) {
                r.retire_at = Some(now);
                out.push(r.fingerprint.clone());
            }
        }
        if !out.is_empty() {
            self.store_cas(records, Batch::new())?;
        }
        Ok(out)
    }

    pub fn retire_cas(&self) -> Result<Vec<String>> {
        let now = self.clock.now_unix();
        let mut records = self.ca_records();
        let mut out = Vec::new();
        for r in records.iter_mut() {
            if r.retires_by(now) {
                r.state = CaState::Retired;
                out.push(r.fingerprint.clone());
            }
        }
        if !out.is_empty() {
            self.store_cas(records, Batch::new())?;
        }
        Ok(out)
    }

    /// The latest expiry of any client certificate the current CA issued that a party may still
    /// show: identities' client certificates, bootstrap certificates of unused tokens, and the
    /// control plane's own connections (`now + control_plane_ttl`). Server certificates are not
    /// waited for: the hub's and the sites' are re-issued from the new CA before the old leaves.
    pub fn last_issued_expiry(&self) -> Result<i64> {
        let now = self.clock.now_unix();
        let mut last = now + self.config.control_plane_ttl.as_secs() as i64;
        self.store().visit_prefix(Space::Serials, "", &mut |_, v| {
            if let Ok(s) = serde_json::from_slice::<SerialRecord>(v) {
                if !s.is_server() {
                    last = last.max(s.not_after);
                }
            }
            true
        })?;
        self.visit_json(Space::Tokens, "", |t: TokenRecord| {
            if t.state == TokenState::Unused {
                last = last.max(t.expires_at);
            }
            true
        })?;
        Ok(last)
    }
}

/// A CA rollout waiting for sites (`meta/ca_rollout`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub next: String,
    pub event_seq: u64,
    pub started_at: i64,
}

impl Estate {
    pub fn ca_rollout(&self) -> Result<Option<RolloutRecord>> {
        Ok(get_json(self.store(), Space::Meta, "ca_rollout")?)
    }

    pub fn set_ca_rollout(&self, r: Option<&RolloutRecord>) -> Result<()> {
        let mut b = Batch::new();
        match r {
            Some(r) => {
                b.put_json(Space::Meta, "ca_rollout", r)?;
            }
            None => {
                b.delete(Space::Meta, "ca_rollout");
            }
        }
        self.store().commit(b)?;
        Ok(())
    }
}
