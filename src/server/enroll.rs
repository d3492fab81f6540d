//! `tillit.v1.enroll` and `tillit.v1.svc.renew`: an identity gets its credentials with a join
//! token, and renews them with its own key.

use super::accounts::{agent_entry, ensure_role_pushed};
use super::dispatch::{Call, Handle};
use super::origin::RequestInfo;
use super::{After, Ctx};
use std::sync::Arc;
use crate::audit::Entry;
use crate::error::{ApiError, ErrorCode};
use crate::estate::{IdentityRecord, IdentityState};
use crate::identity::IdentityKind;
use crate::issuer::x509::{self, CsrError};
use crate::names::ServiceId;
use crate::proto::{self, EnrollRequest, IssuedReply, RenewRequest};
use crate::policy::{check_token, TokenRefusal};
use crate::estate::TILLIT_ACCOUNT;
use crate::subjects;

impl Handle for proto::Enroll {
    async fn handle(ctx: &Arc<Ctx>, call: &mut Call, req: EnrollRequest) -> Result<IssuedReply, ApiError> {
        let (reply, after) = enroll(ctx, &call.signer, call.info.as_ref(), req).await?;
        call.after = Some(after);
        Ok(reply)
    }
}

serve_verbs! { Renew(caller) => renew }

fn csr_error(e: CsrError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

// === enroll ===

/// A token being enrolled with right now (held for the request).
struct Burning<'a> {
    ctx: &'a Ctx,
    id: String,
}

impl<'a> Burning<'a> {
    fn claim(ctx: &'a Ctx, id: &str) -> Option<Self> {
        let mut set = ctx.cache.burning.lock().ok()?;
        set.insert(id.to_string()).then(|| Burning { ctx, id: id.to_string() })
    }
}

impl Drop for Burning<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.ctx.cache.burning.lock() {
            set.remove(&self.id);
        }
    }
}

fn refusal(r: TokenRefusal, sid: &ServiceId) -> ApiError {
    match r {
        TokenRefusal::Invalid => ApiError::new(ErrorCode::TokenInvalid, "join token is not valid (unknown, forged or tampered with)"),
        TokenRefusal::Used => ApiError::new(ErrorCode::TokenUsed, "join token was already used; ask for a new one"),
        TokenRefusal::Expired => ApiError::new(ErrorCode::TokenExpired, "join token has expired; ask for a new one"),
        TokenRefusal::WrongIdentity => ApiError::forbidden(format!("join token is not for {sid}")),
    }
}

/// Check that a public xkey is well formed and not the all-zero key.
fn check_xkey(x: &str) -> Result<(), ApiError> {
    let bad = || ApiError::bad_request("xkey is not a valid curve25519 public key (X…)");
    nkeys::XKey::from_public_key(x).map_err(|_| bad())?;
    let raw = data_encoding::BASE32_NOPAD.decode(x.as_bytes()).map_err(|_| bad())?;
    if raw.len() != 35 {
        return Err(bad());
    }
    if raw[1..33].iter().all(|b| *b == 0) {
        return Err(ApiError::bad_request("xkey is the all-zero key"));
    }
    Ok(())
}

async fn enroll(
    ctx: &Ctx,
    user_pub: &str,
    info: Option<&RequestInfo>,
    req: EnrollRequest,
) -> Result<(IssuedReply, After), ApiError> {
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    match info {
        Some(i) if i.acc == ctx.bootstrap_account => {}
        _ => return Err(ApiError::unauthenticated("enrollment must come from a join token's bootstrap connection")),
    }
    if req.token_id.len() > 64 || req.token_secret.len() > 128 {
        return Err(ApiError::new(ErrorCode::TokenInvalid, "join token is not valid (unknown, forged or tampered with)"));
    }
    let Some(tok) = e.token(&req.token_id).map_err(ApiError::from)? else {
        return Err(refusal(TokenRefusal::Invalid, &req.identity));
    };
    // This very key already enrolled with this token: its reply was lost (the replica serving
    // it died before the reply left). Deliver fresh credentials for the same key, never
    // `token_used` for the enrollee's own enrollment.
    if tok.state == crate::estate::TokenState::Used && tok.used_by.as_deref() == Some(user_pub) {
        check_token(&tok.secret_sha256, false, tok.expires_at, &tok.identity, &req.token_secret, &req.identity, now)
            .map_err(|r| refusal(r, &req.identity))?;
        if let Some(rec) = e.identity(user_pub).map_err(ApiError::from)?.filter(|r| r.state == IdentityState::Active) {
            tracing::info!(identity = %rec.id, user = user_pub, "enrollment asked again by its own key: credentials delivered again");
            let reply = renew(ctx, &rec, RenewRequest { csr: req.csr }).await?;
            return Ok((reply, After::RevokeBootstrap(tok.bootstrap_user, tok.expires_at)));
        }
    }
    check_token(
        &tok.secret_sha256,
        tok.state == crate::estate::TokenState::Used,
        tok.expires_at,
        &tok.identity,
        &req.token_secret,
        &req.identity,
        now,
    )
    .map_err(|r| refusal(r, &req.identity))?;
    if let Some(u) = info.and_then(|i| i.user.as_ref()) {
        if u != &tok.bootstrap_user {
            return Err(ApiError::forbidden("this connection is not the join token's bootstrap user"));
        }
    }
    check_xkey(&req.xkey)?;
    let csr_key = x509::parse_csr(&req.csr, user_pub).map_err(csr_error)?;
    if e.identity(user_pub).map_err(ApiError::from)?.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, "this nkey is already enrolled; generate a new one"));
    }

    // Everything that can fail is done before the token burns.
    let sid = tok.identity.clone();
    let site = crate::names::agent_site(&sid).map(str::to_string);
    let admin = crate::names::admin_name(&sid).map(str::to_string);
    let (acct, role) = match (&site, &admin) {
        (Some(site), _) => (crate::estate::AccountRecord::clone(&agent_entry(ctx, site, user_pub).await?.0), None),
        (None, Some(_)) => (e.account(TILLIT_ACCOUNT).map_err(ApiError::from)?, None),
        (None, None) => {
            let entry = ensure_role_pushed(ctx, &sid).await?;
            (crate::estate::AccountRecord::clone(&entry.0), Some(entry.1.clone()))
        }
    };
    let acct = &acct;
    let admin_id = admin.as_ref().map(|n| crate::names::spiffe_id(e.trust_domain(), &["tillit", "admin", n]));
    let issue = match (&site, &admin, &role) {
        (Some(site), _, _) => e.issue_agent(site, user_pub, &csr_key).map_err(ApiError::from)?,
        (None, Some(name), _) => {
            let draft = IdentityRecord::admin(admin_id.as_deref().unwrap_or_default(), name, user_pub, "", 0, 0);
            e.reissue_admin(&draft, &csr_key).map_err(ApiError::from)?
        }
        (None, None, Some(role)) => e.issue_service(acct, role, user_pub, &csr_key).map_err(ApiError::from)?,
        (None, None, None) => return Err(ApiError::internal("no role for a service")),
    };
    // One enrollment per token: concurrent uses race here; the loser sees token_used.
    let _burning = Burning::claim(ctx, &tok.id).ok_or_else(|| refusal(TokenRefusal::Used, &sid))?;
    if e.token(&tok.id).map_err(ApiError::from)?.map(|t| t.state) != Some(crate::estate::TokenState::Unused) {
        return Err(refusal(TokenRefusal::Used, &sid));
    }
    let rec = IdentityRecord {
        id: match (&site, &admin_id) {
            (Some(s), _) => crate::names::spiffe_id(e.trust_domain(), &["tillit", "site", s, "agent"]),
            (None, Some(id)) => id.clone(),
            (None, None) => sid.spiffe_id(e.trust_domain()),
        },
        kind: match (&site, &admin) {
            (Some(_), _) => IdentityKind::Agent,
            (None, Some(_)) => IdentityKind::Admin,
            (None, None) => IdentityKind::Service,
        },
        name: match (&site, &admin) {
            (Some(s), _) => subjects::agent_consumer(s, user_pub),
            (None, Some(n)) => n.clone(),
            (None, None) => sid.service.clone(),
        },
        account: acct.name.clone(),
        user_public_key: user_pub.to_string(),
        cert_serial: issue.serial.clone(),
        issued_at: issue.issued_at,
        expires_at: issue.expires_at,
        state: IdentityState::Active,
        service: admin.is_none().then(|| sid.clone()),
        xkey: Some(req.xkey.clone()),
        revoked_at: None,
        revoke_reason: None,
        site: site.clone(),
        role_key: issue.role_key.clone(),
        prev_role_key: None,
        // An admin gets the role and tenants its token was minted with.
        admin_role: admin.is_some().then(|| tok.admin_role.unwrap_or(crate::proto::AdminRole::Owner)),
        admin_tenants: if admin.is_some() { tok.admin_tenants.clone() } else { vec![] },
        earlier_serials: Some(vec![]),
    };
    let agent = site.as_ref().map(|site| crate::estate::sites::AgentStatus {
        site: site.clone(),
        user_public_key: user_pub.to_string(),
        consumer: rec.name.clone(),
        ..Default::default()
    });
    let b = e.enrollment_batch(&rec, &tok, agent.as_ref()).map_err(ApiError::from)?;
    // The token burn and the identity become durable together, with their audit record.
    let entry = Entry::ok(&rec.id, "enroll", &rec.id)
        .detail(serde_json::json!({ "user": user_pub, "serial": issue.serial, "token_id": tok.id, "expires_at": issue.expires_at }))
        .batch(b);
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    ctx.metrics.identities.inc();
    ctx.metrics.issued("enroll");
    tracing::info!(identity = %rec.id, user = user_pub, serial = %issue.serial, "enrolled");
    Ok((ctx.estate.issued_reply(&rec, acct, issue.user_jwt, issue.cert_pem), After::RevokeBootstrap(tok.bootstrap_user, tok.expires_at)))
}

// === renew ===

async fn renew(ctx: &Ctx, caller: &IdentityRecord, req: RenewRequest) -> Result<IssuedReply, ApiError> {
    let e = &ctx.estate;
    let csr_key = x509::parse_csr(&req.csr, &caller.user_public_key).map_err(csr_error)?;
    let acct = e.account(&caller.account).map_err(ApiError::from)?;
    // For a service, the role key that signed its new JWT (`None`: the account's own key).
    let mut service_signer = None;
    let (jwt, cert_pem, serial, issued, expires) = match (caller.kind, &caller.service) {
        (IdentityKind::Service, Some(sid)) => {
            let entry = ensure_role_pushed(ctx, sid).await?;
            let i = e.issue_service(&entry.0, &entry.1, &caller.user_public_key, &csr_key).map_err(ApiError::from)?;
            service_signer = Some(i.role_key.clone());
            (i.user_jwt, i.cert_pem, i.serial, i.issued_at, i.expires_at)
        }
        (IdentityKind::Admin, _) => {
            let i = e.reissue_admin(caller, &csr_key).map_err(ApiError::from)?;
            (i.user_jwt, i.cert_pem, i.serial, i.issued_at, i.expires_at)
        }
        (IdentityKind::Agent, _) => {
            let site = caller.site.as_deref().ok_or_else(|| ApiError::internal("agent identity without a site"))?;
            if e.site(site).map_err(ApiError::from)?.is_none() {
                return Err(ApiError::forbidden(format!("site {site} was removed; its agents cannot renew")));
            }
            let i = e.issue_agent(site, &caller.user_public_key, &csr_key).map_err(ApiError::from)?;
            (i.user_jwt, i.cert_pem, i.serial, i.issued_at, i.expires_at)
        }
        _ => return Err(ApiError::forbidden("this kind of identity cannot renew here")),
    };
    let mut rec = caller.clone();
    match service_signer {
        Some(Some(key)) if rec.role_key.as_ref() != Some(&key) => {
            rec.prev_role_key = rec.role_key.take();
            rec.role_key = Some(key);
        }
        // Callout mode: no role key signs this identity's JWT any more.
        Some(None) => {
            rec.prev_role_key = None;
            rec.role_key = None;
        }
        _ => {}
    }
    rec.renewed_from(ctx.estate.clock().now_unix());
    rec.cert_serial = serial;
    rec.issued_at = issued;
    rec.expires_at = expires;
    let b = e.reissue_batch(&rec).map_err(ApiError::from)?;
    let entry = Entry::ok(&caller.id, "renew", &rec.id)
        .detail(serde_json::json!({ "user": rec.user_public_key, "serial": rec.cert_serial, "expires_at": rec.expires_at }))
        .batch(b);
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    ctx.metrics.issued("renew");
    tracing::debug!(identity = %rec.id, user = %rec.user_public_key, "renewed");
    Ok(ctx.estate.issued_reply(&rec, &acct, jwt, cert_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xkeys_are_checked() {
        let x = nkeys::XKey::new();
        check_xkey(&x.public_key()).unwrap();
        assert!(check_xkey("XNOTAKEY").is_err());
        assert!(check_xkey(&nkeys::KeyPair::new_user().public_key()).is_err());
        // The all-zero curve25519 public key, properly encoded, is still refused.
        let encoded = encode_xkey_public(&[0u8; 32]);
        assert!(nkeys::XKey::from_public_key(&encoded).is_ok(), "the encoding itself is valid");
        assert!(check_xkey(&encoded).unwrap_err().message.contains("all-zero"), "{encoded}");
    }

    fn encode_xkey_public(raw: &[u8; 32]) -> String {
        // prefix byte for 'X' (curve) keys is 23 << 3; crc16 (xmodem) little endian; base32 no pad.
        let mut v = vec![23u8 << 3];
        v.extend_from_slice(raw);
        let crc = crc16(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        data_encoding::BASE32_NOPAD.encode(&v)
    }

    fn crc16(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for b in data {
            crc ^= (*b as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            }
        }
        crc
    }
}
