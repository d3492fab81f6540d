//! Envelope keys and the control plane's xkey: the envelope signer, rotation (add next,
//! switch, retire) and the trust set (`trust.jwks`) that publishes them.

use super::*;

/// Store key of the control plane's xkey seed.
pub const KEYS_XKEY: &str = "xkey/control-plane";

/// An envelope signing key (Ed25519), by its public nkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeKey {
    pub kid: String,
    pub public_key: String,
    /// `current` signs; `next` is published ahead of a switch; `previous` still verifies until
    /// `retire_at`; `retired` is kept for the record only.
    pub state: String,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

/// The control plane's xkey as a JWK (OKP/X25519, `use: enc`), so admins can seal to it.
fn xkey_jwk(public: &str, issuer: &str) -> Option<serde_json::Value> {
    let raw = data_encoding::BASE32_NOPAD.decode(public.as_bytes()).ok()?;
    let key = raw.get(1..33)?;
    Some(serde_json::json!({
        "kty": "OKP",
        "crv": "X25519",
        "x": data_encoding::BASE64URL_NOPAD.encode(key),
        "kid": public,
        "use": "enc",
        "iss": issuer,
        "tillit_xkey": public,
    }))
}

impl Estate {
    /// The envelope trust set (`trust.jwks`): an RFC 7517 JWK Set of OKP/Ed25519 keys, each
    /// bound to its issuer (`iss`).
    pub fn trust_jwks(&self) -> String {
        // Rendered again only when the keys changed (every issued reply carries it).
        let keys = self.envelope_keys();
        if let Ok(held) = self.trust_jwks.lock() {
            if let Some((_, jwks)) = held.as_ref().filter(|(k, _)| *k == keys) {
                return jwks.clone();
            }
        }
        let jwks = self.render_trust_jwks(&keys);
        if let Ok(mut held) = self.trust_jwks.lock() {
            *held = Some((keys, jwks.clone()));
        }
        jwks
    }

    fn render_trust_jwks(&self, keys: &[EnvelopeKey]) -> String {
        let issuer = crate::envelope::issuer(self.trust_domain());
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .filter(|k| k.state != "retired")
            .filter_map(|k| crate::envelope::jwk(&k.kid, &issuer, &k.public_key, &k.state))
            .chain(self.meta.xkey_public.as_ref().and_then(|x| xkey_jwk(x, &issuer)))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_else(|_| "{\"keys\":[]}".into())
    }

    /// The control plane's xkey (opens values sealed to it, seals values to readers).
    pub fn xkey(&self) -> Result<nkeys::XKey> {
        let seed = self
            .vault
            .get_sealed(Space::Keys, KEYS_XKEY)?
            .ok_or_else(|| EstateError::Key("xkey".into(), "no control-plane xkey in the store".into()))?;
        nkeys::XKey::from_seed(std::str::from_utf8(&seed).unwrap_or("")).map_err(key_err("xkey"))
    }

    /// A signer with the current envelope key.
    pub fn envelope_signer(&self) -> Result<crate::envelope::Signer> {
        let keys = self.envelope_keys();
        let k = keys
            .iter()
            .find(|k| k.state == "current")
            .ok_or_else(|| EstateError::Key("envelope".into(), "no current envelope key".into()))?;
        let key = self.key(&keys_envelope(&k.public_key))?;
        Ok(crate::envelope::Signer::new(&k.kid, &crate::envelope::issuer(self.trust_domain()), key))
    }

    /// The envelope keys now.
    pub fn envelope_keys(&self) -> Vec<EnvelopeKey> {
        self.envelope_keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn store_envelope_keys(&self, keys: Vec<EnvelopeKey>, extra: Batch) -> Result<()> {
        let mut b = extra;
        b.put_json(Space::Meta, "envelope_keys", &keys)?;
        self.store().commit(b)?;
        if let Ok(mut k) = self.envelope_keys.write() {
            *k = keys;
        }
        Ok(())
    }

    /// Rotation, step 1: add a `next` key (published in the trust set, not yet signing).
    pub fn add_next_envelope_key(&self) -> Result<EnvelopeKey> {
        let mut keys = self.envelope_keys();
        if let Some(n) = keys.iter().find(|k| k.state == "next") {
            return Ok(n.clone());
        }
        let kp = KeyPair::new_account();
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &keys_envelope(&kp.public_key()), seed_of(&kp, "envelope key")?.expose().as_bytes())?;
        let next = EnvelopeKey { kid: kp.public_key(), public_key: kp.public_key(), state: "next".into(), created_at: self.clock.now_unix(), retire_at: None };
        keys.push(next.clone());
        self.store_envelope_keys(keys, b)?;
        Ok(next)
    }

    /// Rotation, step 2: `next` signs from now on; the old key keeps verifying until `retire_at`.
    pub fn switch_envelope_key(&self, retire_after_secs: i64) -> Result<(String, String, i64)> {
        let now = self.clock.now_unix();
        let mut keys = self.envelope_keys();
        let next = keys.iter().position(|k| k.state == "next").ok_or_else(|| EstateError::Key("envelope".into(), "no next key".into()))?;
        let mut old = String::new();
        let retire_at = now + retire_after_secs;
        for k in keys.iter_mut() {
            if k.state == "current" {
                k.state = "previous".into();
                k.retire_at = Some(retire_at);
                old = k.kid.clone();
            }
        }
        keys[next].state = "current".into();
        let new = keys[next].kid.clone();
        self.store_envelope_keys(keys, Batch::new())?;
        Ok((new, old, retire_at))
    }

    /// Retire `previous` keys whose time has come; true if any changed.
    pub fn retire_envelope_keys(&self) -> Result<bool> {
        let now = self.clock.now_unix();
        let mut keys = self.envelope_keys();
        let mut changed = false;
        for k in keys.iter_mut() {
            if k.state == "previous" && k.retire_at.is_some_and(|t| t <= now) {
                k.state = "retired".into();
                changed = true;
            }
        }
        if changed {
            self.store_envelope_keys(keys, Batch::new())?;
        }
        Ok(changed)
    }
}
