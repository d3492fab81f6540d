//! The break-glass bundle's place in the estate ([`crate::breakglass`] is the bundle itself):
//! minting one (at `init`, and at each rotation), the public record kept of it, the hub's
//! client trust file that pins its CA, and the connections made with it.
//!
//! What changes at a rotation, and who applies it:
//! - the SYS account gets a revocation of the old user (kept until that user's JWT expires), so
//!   the old creds are refused even with another valid certificate; `serve` pushes it at start;
//! - the hub's client trust file ([`Estate::server_ca_bundle_pem`]) swaps the old CA for the new;
//! - the operator JWT lists the new operator signing key instead of the old one. nats-server
//!   reads its operator only at start: a reload that changes it is refused as a whole
//!   ("config reload not supported for TrustedOperators", `server/reload.go` `diffOptions`), so
//!   a rotation ends with a restart of the hub's servers, which also reads the new trust file.

use super::*;
use crate::breakglass::{self as bg, Bundle, Connection, PublicRecord, Retired};

/// `meta/break_glass`: the current bundle's [`PublicRecord`].
pub const META_BREAK_GLASS: &str = "break_glass";
/// `meta/break_glass_seen`: how far the connect events were read, and the last connections.
pub const META_BREAK_GLASS_SEEN: &str = "break_glass_seen";

/// What the control plane has read of the connect events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// The last stream sequence read.
    pub seq: u64,
    /// The last break-glass connections, oldest first ([`bg::KEEP_CONNECTIONS`] at most).
    #[serde(default)]
    pub connections: Vec<Connection>,
    /// How many break-glass connections were ever seen.
    #[serde(default)]
    pub total: u64,
}

/// A bundle just minted, with what the estate becomes when it is committed.
#[derive(Debug)]
pub struct Issued {
    pub bundle: Bundle,
    pub record: PublicRecord,
    /// The operator JWT listing the new operator signing key (and not the old one).
    pub operator_jwt: String,
    /// The SYS account with the previous user revoked (none at `init`).
    pub sys_account: Option<AccountRecord>,
    /// The bundle rotated away.
    pub previous: Option<Retired>,
}

impl Estate {
    /// The current break-glass bundle's public record (none in an estate made before it).
    pub fn break_glass(&self) -> Result<Option<PublicRecord>> {
        Ok(get_json(self.store(), Space::Meta, META_BREAK_GLASS)?)
    }

    /// The hub's client trust file (`DATA/nats/tls/ca.pem`): the CA bundle and the current
    /// break-glass CA. Every writer of that file uses this; identities' and sites' `ca.pem`
    /// ([`Estate::ca_bundle_pem`]) never hold the break-glass CA, so it vouches for no server.
    pub fn server_ca_bundle_pem(&self) -> String {
        let mut out = self.ca_bundle_pem();
        match self.break_glass() {
            Ok(Some(r)) => {
                out.push_str(r.ca_cert_pem.trim_end());
                out.push('\n');
            }
            Ok(None) => {}
            Err(e) => tracing::error!("cannot read the break-glass record; the hub's trust file leaves its CA out: {e}"),
        }
        out
    }

    /// Mint a new bundle (nothing is stored): its SYS user is signed now, the operator JWT and
    /// the SYS account are re-signed for it.
    pub fn mint_break_glass(&self) -> Result<Issued> {
        let now = self.clock.now_unix();
        let sys = self.account_fresh(SYS_ACCOUNT)?;
        let sys_signing = sys.signing_key.clone();
        let sign = |user: &str, exp: i64| -> std::result::Result<String, bg::BreakGlassError> {
            self.sign_user(&sys, user, bg::USER_NAME, UserPermissions::new(vec![], vec![]), exp)
                .map_err(|e| bg::BreakGlassError::Key(e.to_string()))
        };
        let bundle = bg::mint(&bg::MintInputs {
            trust_domain: self.trust_domain(),
            nats_urls: self.config.urls(),
            hub_ca_pem: self.ca_bundle_pem(),
            operator_public_key: &self.meta.operator_public_key,
            system_account: &sys.public_key,
            sign_user: &sign,
            now,
        })
        .map_err(|e| EstateError::Key("break-glass bundle".into(), e.to_string()))?;
        let old = self.break_glass()?;
        let mut record = bundle.public(&sys_signing);
        let previous = old.as_ref().map(|o| Retired {
            fingerprint: o.fingerprint.clone(),
            user_public_key: o.user_public_key.clone(),
            operator_signing_key: o.operator_signing_key.clone(),
            rotated_at: now,
        });
        if let Some(o) = &old {
            record.previous = o.previous.clone();
            record.previous.extend(previous.clone());
        }
        let operator_jwt = self.operator_jwt_with(&bundle.operator_signing_key)?;
        let sys_account = match &old {
            Some(o) => Some(self.preview_revocation(&sys, std::slice::from_ref(&o.user_public_key), o.expires_at)?),
            None => None,
        };
        Ok(Issued { bundle, record, operator_jwt, sys_account, previous })
    }

    /// The operator JWT with `break_glass_key` as its only operator signing key besides the
    /// control plane's.
    fn operator_jwt_with(&self, break_glass_key: &str) -> Result<String> {
        let meta: EstateMeta = get_json(self.store(), Space::Meta, "estate")?.ok_or_else(|| EstateError::NotInitialised { dir: self.dir.root().display().to_string() })?;
        let current: Claims<OperatorNats> = jwt::decode_from(&meta.operator_jwt, &[&meta.operator_public_key])?;
        let operator = self.key("operator")?;
        let claims = Claims {
            jti: jwt::new_jti()?,
            iat: self.clock.now_unix().max(current.iat + 1),
            nats: OperatorNats { signing_keys: vec![meta.operator_signing_key.clone(), break_glass_key.to_string()], ..current.nats },
            ..current
        };
        Ok(jwt::encode(&claims, &operator)?)
    }

    /// Store what [`Estate::mint_break_glass`] made that does not travel in an audit record:
    /// the public record and the operator JWT (`meta`). The SYS account goes with the caller's
    /// audit record (or is committed here when there is no log yet, at `init`).
    pub fn commit_break_glass(&self, issued: &Issued, with_account: bool) -> Result<()> {
        let mut meta: EstateMeta = get_json(self.store(), Space::Meta, "estate")?.ok_or_else(|| EstateError::NotInitialised { dir: self.dir.root().display().to_string() })?;
        meta.operator_jwt = issued.operator_jwt.clone();
        let mut b = Batch::new();
        b.put_json(Space::Meta, "estate", &meta)?;
        b.put_json(Space::Meta, META_BREAK_GLASS, &issued.record)?;
        if with_account {
            if let Some(sys) = &issued.sys_account {
                b.put_json(Space::Accounts, SYS_ACCOUNT, sys)?;
            }
        }
        self.store().commit(b)?;
        Ok(())
    }

    /// The operator JWT as stored now (the in-memory `meta` is as the estate was opened).
    pub fn operator_jwt_now(&self) -> Result<String> {
        let meta: Option<EstateMeta> = get_json(self.store(), Space::Meta, "estate")?;
        Ok(meta.map(|m| m.operator_jwt).unwrap_or_else(|| self.meta.operator_jwt.clone()))
    }

    /// How far the connect events were read.
    pub fn break_glass_seen(&self) -> Result<Seen> {
        Ok(get_json(self.store(), Space::Meta, META_BREAK_GLASS_SEEN)?.unwrap_or_default())
    }

    /// Remember how far the connect events were read, with `found` (new connections).
    pub fn note_break_glass_seen(&self, seq: u64, found: Vec<Connection>) -> Result<Seen> {
        let mut seen = self.break_glass_seen()?;
        seen.seq = seen.seq.max(seq);
        seen.total += found.len() as u64;
        seen.connections.extend(found);
        let excess = seen.connections.len().saturating_sub(bg::KEEP_CONNECTIONS);
        seen.connections.drain(..excess);
        let mut b = Batch::new();
        b.put_json(Space::Meta, META_BREAK_GLASS_SEEN, &seen)?;
        self.store().commit(b)?;
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::estate::tests::new_estate;

    #[test]
    fn rotation_revokes_the_old_user_and_moves_the_pins() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock.clone());
        assert_eq!(e.server_ca_bundle_pem(), e.ca_bundle_pem(), "no bundle yet, nothing more pinned");
        let first = e.mint_break_glass().unwrap();
        assert!(first.sys_account.is_none() && first.previous.is_none());
        e.commit_break_glass(&first, true).unwrap();
        let op: Claims<OperatorNats> = jwt::decode_from(&e.operator_jwt_now().unwrap(), &[&e.meta.operator_public_key]).unwrap();
        assert_eq!(op.nats.signing_keys, vec![e.meta.operator_signing_key.clone(), first.bundle.operator_signing_key.clone()]);
        let pinned = e.server_ca_bundle_pem();
        assert!(pinned.contains(first.bundle.ca_cert_pem.trim_end()));
        assert!(!e.ca_bundle_pem().contains(first.bundle.ca_cert_pem.trim_end()), "identities never trust the break-glass CA");
        // The SYS user is signed by the SYS account's signing key.
        let findings = bg::verify(first.bundle.to_json().expose(), clock.now_unix(), None);
        assert!(findings.iter().all(|f| f.ok), "{findings:#?}");

        clock.advance(10);
        let second = e.mint_break_glass().unwrap();
        let sys = second.sys_account.clone().unwrap();
        assert!(sys.revocations.contains_key(&first.bundle.user_public_key));
        e.commit_break_glass(&second, true).unwrap();
        let op: Claims<OperatorNats> = jwt::decode_from(&e.operator_jwt_now().unwrap(), &[&e.meta.operator_public_key]).unwrap();
        assert_eq!(op.nats.signing_keys, vec![e.meta.operator_signing_key.clone(), second.bundle.operator_signing_key.clone()]);
        let pinned = e.server_ca_bundle_pem();
        assert!(pinned.contains(second.bundle.ca_cert_pem.trim_end()) && !pinned.contains(first.bundle.ca_cert_pem.trim_end()));
        let rec = e.break_glass().unwrap().unwrap();
        assert_eq!(rec.owner_of(&first.bundle.user_public_key), Some(first.bundle.fingerprint.as_str()));
        assert_eq!(rec.owner_of(&second.bundle.user_public_key), Some(second.bundle.fingerprint.as_str()));
        let stored: Claims<AccountNats> = jwt::decode(&e.account(SYS_ACCOUNT).unwrap().jwt).unwrap();
        assert!(stored.nats.revocations.contains_key(&first.bundle.user_public_key));
    }

    #[test]
    fn sys_exports_its_connect_events_to_tillit() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock);
        let sys = e.account(SYS_ACCOUNT).unwrap();
        let s: Claims<AccountNats> = jwt::decode(&sys.jwt).unwrap();
        assert!(s.nats.exports.iter().any(|x| x.subject == subjects::account_connect_events(&sys.public_key) && x.kind == "stream"));
        let t: Claims<AccountNats> = jwt::decode(&e.account(TILLIT_ACCOUNT).unwrap().jwt).unwrap();
        assert!(t.nats.imports.iter().any(|i| i.account == sys.public_key && i.local_subject.as_deref() == Some(subjects::SYS_CONNECT_EVENTS)));
    }

    #[test]
    fn seen_keeps_the_last_connections() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock);
        let c = |seq| Connection { seq, at: String::new(), server: "hub".into(), host: "h".into(), user: "U".into(), fingerprint: "f".into(), name: String::new() };
        e.note_break_glass_seen(5, (1..=5).map(c).collect()).unwrap();
        let s = e.note_break_glass_seen(40, (6..=40).map(c).collect()).unwrap();
        assert_eq!((s.seq, s.total, s.connections.len()), (40, 40, bg::KEEP_CONNECTIONS));
        assert_eq!(s.connections.last().unwrap().seq, 40);
        // Never backwards.
        assert_eq!(e.note_break_glass_seen(3, vec![]).unwrap().seq, 40);
    }
}
