//! Adoption: the estate taking over keys and accounts another tool made (`tillit import nsc`,
//! read by [`crate::nsc`]). The operator key and the system account come in at creation
//! ([`Estate::create_with`]); the other accounts after it ([`Estate::adopt_accounts`]). Every
//! seed taken over is sealed like tillit's own; every adopted account also gets a signing key of
//! tillit's, which signs the users tillit issues in it.

use super::*;

/// The roots `init` takes over instead of making new ones.
#[derive(Debug)]
pub struct AdoptedRoots {
    pub operator_seed: SecretString,
    pub operator_name: String,
    /// The operator JWT's `strict_signing_key_usage` (off while users signed by an account's
    /// identity key must keep connecting: the server refuses them under a strict operator).
    pub strict: bool,
    /// The system account taken over as SYS, if any (else tillit makes its own).
    pub sys: Option<AdoptedAccount>,
}

/// One account to take over.
#[derive(Debug)]
pub struct AdoptedAccount {
    /// The name of its tillit record (`SYS`, `tenant-env`, or its own name).
    pub name: String,
    pub kind: AccountKind,
    pub tenant: Option<String>,
    pub env: Option<String>,
    pub identity_seed: SecretString,
    /// Its signing keys kept: public key and seed (their entries are in `adopted`).
    pub kept: Vec<(String, SecretString)>,
    pub adopted: Adopted,
}

/// An adopted account's keys sealed into `b`: its identity key, the signing keys it keeps, and a
/// new signing key of tillit's. Returns (identity, tillit's signing key).
pub(super) fn account_keys(vault: &Vault, b: &mut Batch, a: &AdoptedAccount) -> Result<(KeyPair, KeyPair)> {
    let id = KeyPair::from_seed(a.identity_seed.expose()).map_err(key_err("adopted account"))?;
    let signing = KeyPair::new_account();
    vault.put_sealed(b, Space::Keys, &keys_account(&id.public_key()), a.identity_seed.expose().as_bytes())?;
    vault.put_sealed(b, Space::Keys, &keys_account_signing(&signing.public_key()), seed_of(&signing, &a.name)?.expose().as_bytes())?;
    for (public_key, seed) in &a.kept {
        let kp = KeyPair::from_seed(seed.expose()).map_err(key_err("adopted signing key"))?;
        if kp.public_key() != *public_key {
            return Err(EstateError::Key(format!("signing key {public_key} of {}", a.name), "the seed is another key's".into()));
        }
        vault.put_sealed(b, Space::Keys, &keys_account_signing(public_key), seed.expose().as_bytes())?;
    }
    Ok((id, signing))
}

impl Estate {
    /// Take over `accounts` (none of them SYS, TILLIT or BOOTSTRAP, none existing yet): their
    /// keys sealed, their records written, their JWTs signed with their claims merged in.
    pub fn adopt_accounts(&self, accounts: &[AdoptedAccount]) -> Result<Vec<AccountRecord>> {
        let _g = self.account_lock.try_lock().map_err(|_| EstateError::Conflict("accounts are being changed".into()))?;
        let mut b = Batch::new();
        let mut out = vec![];
        for a in accounts {
            if get_json::<AccountRecord>(self.store(), Space::Accounts, &a.name)?.is_some() {
                return Err(EstateError::Conflict(format!("account {} exists already", a.name)));
            }
            let (id, signing) = account_keys(&self.vault, &mut b, a)?;
            let draft = AccountRecord {
                name: a.name.clone(),
                kind: a.kind,
                public_key: id.public_key(),
                signing_key: signing.public_key(),
                jwt: String::new(),
                iat: 0,
                created_at: self.clock.now_unix(),
                tenant: a.tenant.clone(),
                env: a.env.clone(),
                revocations: BTreeMap::new(),
                revoked_until: BTreeMap::new(),
                callout_epochs: BTreeMap::new(),
                adopted: Some(a.adopted.clone()),
            };
            let rec = self.resign_account(draft)?;
            self.check_jwt_size(&rec)?;
            b.put_json(Space::Accounts, &rec.name, &rec)?;
            out.push(rec);
        }
        self.store().commit(b)?;
        Ok(out)
    }

    /// A client certificate for the users an adopted estate keeps (they hold a `.creds` file but
    /// no certificate, and the hub requires both), valid until `until`; recorded so OCSP
    /// answers for it.
    pub fn issue_adopted_clients_cert(&self, from: &str, until: i64) -> Result<x509::Issued> {
        let now = self.clock.now_unix();
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "adopted", from]);
        let cert = self.ca().issue_client_with_new_key(&spiffe, &format!("users adopted from {from}"), now, until)?;
        let mut b = Batch::new();
        let rec = SerialRecord { not_after: until, what: Some(format!("adopted:{from}")), ..Default::default() };
        b.put_json(Space::Serials, &cert.serial, &rec)?;
        self.store().commit(b)?;
        Ok(cert)
    }
}
