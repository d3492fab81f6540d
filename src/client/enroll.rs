//! Enrollment, the service side: make keys locally, prove possession, write the identity dir.
//!
//! The service generates its user nkey, an xkey and an ECDSA P-256 TLS key; none of them ever
//! leaves the process except as public keys and a CSR. It connects once with the join token's
//! bootstrap credentials, sends one signed request, checks what comes back (the JWT is for its
//! nkey, the certificate for its TLS key and identity, chained to the pinned CA), and writes the
//! identity dir through a staging dir renamed into place.

use super::{connect, ClientError, ConnectParams, NatsCreds, RequestSigner};
use crate::clock::SharedClock;
use crate::crypto::SecretString;
use crate::fsutil::{Replace, WriteDirError};
use crate::identity::{self, IdentityFiles, IdentityInfo};
use crate::issuer::{jwt, x509};
use crate::layout::IdentityDir;
use crate::proto::{self, EnrollRequest, IssuedReply};
use crate::token::JoinToken;
use nkeys::KeyPair;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Keys and CSR an enrollment or renewal sends.
pub struct LocalKeys {
    /// The identity's user nkey: it signs the request, and its public key is the CSR's subject CN.
    pub user: KeyPair,
    /// The identity's curve25519 xkey: the control plane seals secrets to it.
    pub xkey: nkeys::XKey,
    /// PKCS#10 CSR (PEM) for the TLS key, subject CN = the user nkey's public key.
    pub csr_pem: String,
    /// The ECDSA P-256 TLS private key (PEM, a secret).
    pub tls_key_pem: SecretString,
}

impl LocalKeys {
    /// Fresh keys for a new identity.
    pub fn generate() -> Result<Self, ClientError> {
        let user = KeyPair::new_user();
        let (csr_pem, tls_key_pem) = x509::make_csr(&user.public_key()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(LocalKeys { user, xkey: nkeys::XKey::new(), csr_pem, tls_key_pem })
    }

    /// The enrollment request these keys make with `token` (to be signed by [`LocalKeys::user`]).
    pub fn enroll_request(&self, token: &JoinToken) -> EnrollRequest {
        EnrollRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            identity: token.identity.clone(),
            xkey: self.xkey.public_key(),
            csr: self.csr_pem.clone(),
        }
    }
}

/// Check an issued reply against what was asked for, and build the identity dir's files.
pub fn files_from_reply(
    reply: IssuedReply,
    user_seed: SecretString,
    tls_key_pem: SecretString,
    xkey_seed: Option<SecretString>,
    expected_user: &str,
    pinned_ca_fingerprint: &str,
    nats_urls: Vec<String>,
) -> Result<IdentityFiles, ClientError> {
    let bad = |m: &str| ClientError::Protocol(format!("issued credentials rejected: {m}"));
    let claims: jwt::Claims<jwt::UserNats> = jwt::decode(&reply.user_jwt).map_err(|e| bad(&format!("user JWT: {e}")))?;
    if claims.sub != expected_user || reply.user_public_key != expected_user {
        return Err(bad("the user JWT is not for this nkey"));
    }
    if claims.nats.bearer_token {
        return Err(bad("bearer JWTs are refused"));
    }
    // The bundle must hold the CA this identity pins (a rotation adds a CA before it issues,
    // so the pinned one is still there); the pin then moves to the issuing CA the reply names.
    let in_bundle: Vec<String> = super::tls::certs_from_pem(&reply.ca_pem)
        .map_err(|e| bad(&format!("CA bundle: {e}")))?
        .iter()
        .map(|c| format!("sha256:{}", crate::crypto::sha256_hex(c.as_ref())))
        .collect();
    if !in_bundle.iter().any(|f| f == pinned_ca_fingerprint) {
        return Err(bad("the CA bundle does not hold the pinned CA"));
    }
    if !in_bundle.contains(&reply.ca_fingerprint) {
        return Err(bad("the CA bundle does not hold the issuing CA it names"));
    }
    // The certificate must be for our key and chain to the CA: rustls checks both when it
    // builds the certified key and connects; here, check the key and the identity.
    let ck = super::tls::certified_key(&reply.cert_pem, tls_key_pem.expose())?;
    ck.keys_match().map_err(|_| bad("the certificate is not for this TLS key"))?;
    let der = x509::first_cert_der(&reply.cert_pem).map_err(|e| bad(&e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(&e.to_string()))?;
    let san_ok = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| s.value.general_names.iter().any(|g| matches!(g, x509_parser::extensions::GeneralName::URI(u) if *u == reply.id)))
        .unwrap_or(false);
    if !san_ok {
        return Err(bad("the certificate does not carry this identity's SPIFFE id"));
    }
    let xkey_public_key = match &xkey_seed {
        Some(s) => Some(
            nkeys::XKey::from_seed(s.expose()).map(|x| x.public_key()).map_err(|e| ClientError::Credentials(e.to_string()))?,
        ),
        None => None,
    };
    let renew = crate::policy::renew::renew_at(reply.issued_at_unix, reply.expires_at_unix, crate::policy::renew::random_jitter());
    let info = reply.identity_info(nats_urls, xkey_public_key, renew);
    Ok(IdentityFiles {
        info,
        user_jwt: reply.user_jwt,
        user_seed,
        cert_pem: reply.cert_pem,
        key_pem: tls_key_pem,
        ca_pem: reply.ca_pem,
        trust_jwks: Some(reply.trust_jwks),
        xkey_seed,
    })
}

/// Enroll with `token`, writing the identity dir `out` (which must not hold one yet).
/// `nats` overrides the token's URLs and is what `identity.json` records.
pub async fn enroll(token: &str, out: &Path, nats: Option<&str>, clock: SharedClock) -> Result<IdentityInfo, ClientError> {
    let token = JoinToken::decode(token).map_err(|e| ClientError::Credentials(e.to_string()))?;
    if IdentityDir::new(out).identity_json().exists() {
        return Err(ClientError::Credentials(format!(
            "{} already holds an identity; enroll into a new dir (or remove it first)",
            out.display()
        )));
    }
    // An expired token is known here, before anything is sent (the server would only answer
    // with a TLS alert about the bootstrap certificate).
    if token.expires_at <= clock.now_unix() {
        return Err(ClientError::Api(crate::error::ApiError::new(
            crate::error::ErrorCode::TokenExpired,
            "this join token has expired; ask for a new one (`tillit token create`)",
        )));
    }
    let urls = match nats {
        Some(u) => vec![u.to_string()],
        None => token.nats_urls.clone(),
    };
    let keys = LocalKeys::generate()?;
    let params = bootstrap_params(&token, urls.clone())?;
    let nc = connect(&params).await.map_err(|e| match e {
        // A used token's bootstrap user and certificate are revoked: the server refuses them.
        ClientError::Connect { failure: super::ConnectFailure::Refused, .. } => ClientError::Api(crate::error::ApiError::new(
            crate::error::ErrorCode::TokenUsed,
            "this join token was already used (its bootstrap credentials are revoked); ask for a new one (`tillit token create`)",
        )),
        ClientError::Connect { url, reason, failure } => ClientError::Connect {
            url,
            reason: format!("{reason} (with the join token's bootstrap credentials: is the token complete, unused and unexpired?)"),
            failure,
        },
        other => other,
    })?;
    let body = keys.enroll_request(&token);
    let signer = RequestSigner::new(keys.user.clone(), token.trust_domain.clone(), clock);
    let reply = signer.call::<proto::Enroll>(&nc, body).await?;
    let _ = nc.drain().await;
    let files = files_from_reply(
        reply,
        SecretString::new(keys.user.seed().map_err(|e| ClientError::Credentials(e.to_string()))?),
        keys.tls_key_pem,
        Some(SecretString::new(keys.xkey.seed().map_err(|e| ClientError::Credentials(e.to_string()))?)),
        &keys.user.public_key(),
        &token.ca_fingerprint,
        urls,
    )?;
    write_new_dir(out, &files)?;
    Ok(files.info)
}

/// Connection parameters for a join token's bootstrap user.
pub fn bootstrap_params(token: &JoinToken, urls: Vec<String>) -> Result<ConnectParams, ClientError> {
    let err = |e: crate::token::TokenError| ClientError::Credentials(e.to_string());
    let boot_user = KeyPair::from_seed(&token.bootstrap_seed).map_err(|e| ClientError::Credentials(e.to_string()))?;
    // The bootstrap user is revoked right after enrollment: never chase it, but try each of a
    // clustered hub's URLs (a node may be down).
    let max_reconnects = Some(2 * urls.len().max(1));
    Ok(ConnectParams {
        urls,
        name: format!("tillit-enroll {}", token.identity),
        inbox_prefix: crate::subjects::inbox_prefix(&boot_user.public_key()),
        ca_pem: token.ca_pem().map_err(err)?,
        creds: Arc::new(RwLock::new(NatsCreds {
            user_jwt: token.bootstrap_jwt.clone(),
            user_seed: SecretString::new(token.bootstrap_seed.clone()),
        })),
        cert: super::tls::SwappableCert::new(super::tls::certified_key(
            &token.cert_pem().map_err(err)?,
            token.key_pem().map_err(err)?.expose(),
        )?),
        max_reconnects,
    })
}

/// Write a whole identity dir through a staging dir beside it, renamed into place.
pub fn write_new_dir(out: &Path, files: &IdentityFiles) -> Result<(), ClientError> {
    // Only an empty dir may be replaced (checked for identity.json by the caller).
    let fill = |staging: &Path| identity::write(&IdentityDir::new(staging), files).map_err(ClientError::from);
    crate::fsutil::write_dir_atomic(out, "enroll", Replace::IfEmpty, fill).map_err(|e| match e {
        WriteDirError::Fill(e) => e,
        WriteDirError::NotEmpty { path, source } => ClientError::Credentials(format!("{} exists and is not empty: {source}", path.display())),
        WriteDirError::Io { path, source, .. } => io(&path, source),
    })
}

fn io(p: &Path, e: std::io::Error) -> ClientError {
    ClientError::Identity(identity::IdentityError::Io { path: p.display().to_string(), source: e })
}
