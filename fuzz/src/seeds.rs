//! The seed corpora: a handful of real inputs per target, made with tillit itself (and
//! `openssl ocsp` for OCSP requests, when it is installed). Run by the `gen_seeds` target.

use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use tillit::crypto::SecretString;
use tillit::envelope::Signer;
use tillit::issuer::{creds, jwt, x509};
use tillit::proto;
use tillit::subjects;
use crate::*;

fn put(out: &Path, target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), data.as_ref()).expect("seed written");
}

fn user_jwt(acct: &nkeys::KeyPair, user: &str) -> String {
    let claims = json!({
        "jti": "SEEDJTI1", "iat": NOW - 60, "iss": acct.public_key(), "sub": user, "name": "orders",
        "exp": NOW + 86_400,
        "nats": {
            "type": "user", "version": 2,
            "pub": {"allow": ["acme.shop.>", "tillit.v1.svc.>"], "deny": ["$SYS.>"]},
            "sub": {"allow": ["_INBOX.x.>"]},
            "resp": {"max": 1, "ttl": 0},
            "subs": -1, "data": -1, "payload": -1,
            "bearer_token": false, "tags": ["tillit"]
        }
    });
    let c: jwt::Claims<jwt::UserNats> = serde_json::from_value(claims).expect("user claims");
    jwt::encode(&c, acct).expect("user jwt")
}

fn account_claims() -> serde_json::Value {
    json!({
        "jti": "SEEDJTI2", "iat": NOW - 60, "iss": operator_key().public_key(), "sub": account_key().public_key(),
        "name": "acme-prod",
        "nats": {
            "type": "account", "version": 2,
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
                       "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
            "signing_keys": [
                user_key().public_key().replace('U', "A"),
                {"kind": "user_scope", "key": account_key().public_key(), "role": "acme/shop/orders",
                 "template": {"pub": {"allow": ["acme.>"]}, "sub": {"allow": ["_INBOX.>"]}, "subs": -1}}
            ],
            "exports": [{"name": "tillit", "subject": "tillit.v1.svc.>", "type": "service", "response_type": "Singleton"}],
            "imports": [{"name": "tillit", "subject": "tillit.v1.svc.>", "account": account_key().public_key(), "type": "service"}],
            "revocations": {"UAAA": NOW}
        }
    })
}

fn operator_claims() -> serde_json::Value {
    json!({
        "jti": "SEEDJTI3", "iat": NOW - 60, "iss": operator_key().public_key(), "sub": operator_key().public_key(),
        "name": "tillit",
        "nats": {"type": "operator", "version": 2, "signing_keys": [operator_key().public_key()],
                 "system_account": account_key().public_key(), "strict_signing_key_usage": true}
    })
}

/// Write every target's seeds under `out/<target>/`.
pub fn write_seeds(out: &Path) {
    let user = user_key();
    let acct = account_key();
    let ca_der = tillit::token::pem_to_der(CA_PEM).expect("fixture CA");
    let client = ca().issue_client_with_new_key("spiffe://example.org/acme/shop/prod/orders", "orders", NOW, NOW + 86_400).expect("client cert");
    let client_der = tillit::token::pem_to_der(&client.cert_pem).expect("client der");
    let key_der = tillit::token::pem_to_der(client.key_pem.expose()).expect("key der");
    let ujwt = user_jwt(acct, &user.public_key());
    let useed = SecretString::new(user.seed().expect("seed"));

    // --- join_token ---
    let token = json!({
        "id": "T1", "secret": BASE64URL_NOPAD.encode(&[7u8; 32]), "trust_domain": TD,
        "identity": "acme/shop/prod/orders", "expires_at": NOW + 600,
        "nats_urls": ["tls://127.0.0.1:4222", "tls://[::1]:4222"],
        "ca_fingerprint": format!("sha256:{}", tillit::crypto::sha256_hex(&ca_der)),
        "ca": [tillit::token::b64(&ca_der)],
        "bootstrap_jwt": ujwt, "bootstrap_seed": useed.expose(),
        "cert": tillit::token::b64(&client_der), "key": tillit::token::b64(&key_der)
    });
    let t: tillit::token::JoinToken = serde_json::from_value(token.clone()).expect("token json");
    put(&out, "join_token", "valid", t.encode().expose());
    put(&out, "join_token", "valid-json", serde_json::to_vec(&token).unwrap_or_default());
    let mut bad = token.clone();
    bad["secret"] = "c2hvcnQ".into();
    bad["nats_urls"] = json!([]);
    put(&out, "join_token", "inconsistent-json", serde_json::to_vec(&bad).unwrap_or_default());
    put(&out, "join_token", "pem", format!("  {}\n", t.encode().expose()));

    // --- signed_request ---
    let bodies: Vec<(&str, &str, serde_json::Value)> = vec![
        (proto::Enroll::SUBJECT, proto::Enroll::KIND, json!({"token_id": "T1", "token_secret": "s", "identity": "acme/shop/prod/orders", "xkey": "XABC", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"})),
        (proto::Status::SUBJECT, proto::Status::KIND, json!({})),
        (proto::Grant::SUBJECT, proto::Grant::KIND, json!({"service": "acme/shop/prod/orders", "publish": ["acme.shop.orders.>"], "subscribe": []})),
        (proto::SecretPut::SUBJECT, proto::SecretPut::KIND, json!({"path": "acme/shop/prod/db", "readers": ["acme/shop/prod/orders"], "value": {"sealed": "AAAA", "sender_xkey": "XABC"}})),
        (proto::Ack::SUBJECT, proto::Ack::KIND, json!({"envelope": "a.b.c"})),
        (proto::SiteAdd::SUBJECT, proto::SiteAdd::KIND, json!({"name": "east"})),
    ];
    for (i, (subject, kind, body)) in bodies.iter().enumerate() {
        let tok = proto::sign_request(user, TD, subject, kind, body, NOW).expect("signed request");
        put(&out, "signed_request", &format!("token-{i}"), &tok);
        if let Some(claims) = peek_claims(&tok) {
            put(&out, "signed_request", &format!("claims-{i}"), serde_json::to_vec(&claims).unwrap_or_default());
        }
    }
    let expired = json!({"jti": "x", "iat": NOW - 500, "exp": NOW - 400, "iss": user.public_key(), "aud": proto::audience(TD),
                         "sub": proto::Enroll::SUBJECT, "type": proto::Enroll::KIND, "body": {}});
    put(&out, "signed_request", "claims-expired", format!("{}\n{}", std::str::from_utf8(JWT_HEADER).unwrap_or(""), expired));

    // --- envelope ---
    let signer = Signer::new(&envelope_kid(), &envelope_issuer(), Arc::new(nkeys::KeyPair::from_seed(&acct.seed().expect("seed")).expect("kp")));
    let ack = json!({"site": "east", "outcome": "applied", "seqs": [1, 2, 3], "event_ids": ["e1", "e2"], "last_event_type": "io.tillit.v1.secret.rotated"});
    let envs = [
        signer.sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "site:east", 60, Some(7), json!({"path": "acme/shop/prod/db", "version": 2}), NOW),
        signer.sign(subjects::ENVELOPE_AGENT_ACK, "east", &envelope_issuer(), 60, None, &ack, NOW),
        signer.sign("io.tillit.v1.identity.revoked", "u", "all", 60, Some(1), json!({"user": user.public_key()}), NOW),
        signer.sign("io.tillit.v1.trust.rotated", "t", "site:west", 60, None, json!(null), NOW),
    ];
    for (i, e) in envs.iter().enumerate() {
        let e = e.as_ref().expect("envelope");
        put(&out, "envelope", &format!("token-{i}"), e);
        let parts: Vec<&str> = e.split('.').collect();
        let h = BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap_or_default();
        let b = BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap_or_default();
        put(&out, "envelope", &format!("body-{i}"), &b);
        if i == 0 {
            let mut hb = h.clone();
            hb.push(b'\n');
            hb.extend_from_slice(&b);
            put(&out, "envelope", "header-body", hb);
        }
    }

    // --- trust_jwks ---
    let jwks = trust_jwks();
    put(&out, "trust_jwks", "jwks", &jwks);
    let xkey = nkeys::XKey::new_from_raw([9u8; 32]);
    let mut with_x: serde_json::Value = serde_json::from_str(&jwks).unwrap_or_default();
    with_x["keys"][0]["tillit_xkey"] = xkey.public_key().into();
    with_x["keys"].as_array_mut().map(|k| k.push(json!({"kty": "EC", "crv": "P-256", "x": "abc", "y": "def", "kid": "ec"})));
    put(&out, "trust_jwks", "jwks-xkey", with_x.to_string());
    put(&out, "trust_jwks", "nkey", acct.public_key());

    // --- jwt ---
    put(&out, "jwt", "user", &ujwt);
    let acct_jwt = sign_compact(JWT_HEADER, account_claims().to_string().as_bytes(), operator_key());
    put(&out, "jwt", "account", &acct_jwt);
    put(&out, "jwt", "operator", sign_compact(JWT_HEADER, operator_claims().to_string().as_bytes(), operator_key()));
    put(&out, "jwt", "account-claims", account_claims().to_string());
    put(&out, "jwt", "operator-claims", operator_claims().to_string());
    if let Some(c) = peek_claims(&ujwt) {
        put(&out, "jwt", "user-claims", c.to_string());
    }

    // --- csr ---
    let (csr, _) = x509::make_csr(&user.public_key()).expect("csr");
    put(&out, "csr", "valid", &csr);
    put(&out, "csr", "valid-der", tillit::token::pem_to_der(&csr).unwrap_or_default());
    let (other, _) = x509::make_csr("UOTHER").expect("csr");
    put(&out, "csr", "other-cn-der", tillit::token::pem_to_der(&other).unwrap_or_default());

    // --- creds ---
    put(&out, "creds", "valid", creds::format(&ujwt, &useed).expose());
    put(&out, "creds", "account-seed", creds::format("a.b.c", &SecretString::new(acct.seed().unwrap_or_default())).expose());

    // --- audit_log ---
    let dir = scratch("seeds-audit");
    let _ = std::fs::remove_file(dir.join(tillit::audit::AUDIT_FILE));
    let store = Arc::new(MemStore::default());
    {
        let mut w = tillit::audit::Writer::open(&dir, store.clone(), clock(), audit_key().clone()).expect("audit writer");
        let mut b = tillit::store::Batch::new();
        b.put(tillit::store::Space::Identities, user.public_key(), br#"{"id":"spiffe://example.org/acme/shop/prod/orders"}"#.to_vec());
        b.delete(tillit::store::Space::Tokens, "T1");
        b.put(tillit::store::Space::Keys, "secret", b"sealed".to_vec());
        w.append(vec![
            tillit::audit::Entry::ok("tillit", "init", TD),
            tillit::audit::Entry::ok("spiffe://example.org/admin", "enroll", "acme/shop/prod/orders").batch(b).detail(json!({"serial": "01ab"})),
            tillit::audit::Entry::denied("spiffe://example.org/x", "grant", "acme/shop/prod/orders", "forbidden"),
        ])
        .expect("audit append");
    }
    let log = std::fs::read(dir.join(tillit::audit::AUDIT_FILE)).expect("audit log");
    put(&out, "audit_log", "chain", &log);
    put(&out, "audit_log", "torn", &log[..log.len() - 20]);
    let first = log.split(|&b| b == b'\n').next().unwrap_or_default();
    put(&out, "audit_log", "one-line", [first, b"\n"].concat());
    put(&out, "audit_log", "reauth", [b"#", &log[..]].concat());
    // A legacy line (no MAC): what recovery refuses and `verify` without the key accepts.
    let legacy = format!(r#"{{"seq":1,"time":"2026-05-28T00:00:00Z","time_unix":{NOW},"actor":"tillit","action":"init","target":"{TD}","outcome":"ok","redo":[{{"space":"tokens","key":"T1","value":null}}],"prev":"{}"}}"#, tillit::audit::GENESIS);
    put(&out, "audit_log", "legacy", format!("{legacy}\n"));
    put(&out, "audit_log", "reauth-legacy", format!("#{legacy}\n"));
    let _ = std::fs::remove_dir_all(&dir);

    // --- identity_dir ---
    let info = json!({
        "format": 1, "kind": "service", "id": "spiffe://example.org/acme/shop/prod/orders", "name": "orders",
        "trust_domain": TD, "account": "acme-prod", "account_public_key": acct.public_key(),
        "user_public_key": user.public_key(), "inbox_prefix": "_INBOX.x", "nats_urls": ["tls://127.0.0.1:4222"],
        "ca_fingerprint": format!("sha256:{}", tillit::crypto::sha256_hex(&ca_der)), "cert_serial": client.serial,
        "issued_at": "2026-05-28T00:00:00Z", "expires_at": "2026-05-29T00:00:00Z", "renew_at": "2026-05-28T16:00:00Z",
        "issued_at_unix": NOW, "expires_at_unix": NOW + 86_400, "renew_at_unix": NOW + 57_600,
        "service": "acme/shop/prod/orders", "xkey_public_key": xkey.public_key()
    });
    let parts: Vec<Vec<u8>> = vec![
        serde_json::to_vec_pretty(&info).unwrap_or_default(),
        creds::format(&ujwt, &useed).expose().as_bytes().to_vec(),
        client.cert_pem.as_bytes().to_vec(),
        client.key_pem.expose().as_bytes().to_vec(),
        CA_PEM.as_bytes().to_vec(),
        with_x.to_string().into_bytes(),
        xkey.seed().unwrap_or_default().into_bytes(),
    ];
    put(&out, "identity_dir", "full", parts.join(&0u8));
    put(&out, "identity_dir", "no-optional", parts[..5].join(&0u8));
    put(&out, "identity_dir", "info-only", &parts[0]);

    // --- ocsp_request (openssl makes the requests) ---
    let tmp = scratch("seeds-ocsp");
    let leaf = tmp.join("leaf.pem");
    let issuer = tmp.join("ca.pem");
    let _ = std::fs::write(&leaf, &client.cert_pem);
    let _ = std::fs::write(&issuer, CA_PEM);
    let variants: [(&str, &[&str]); 3] = [("sha1-nonce", &[]), ("sha256", &["-sha256", "-no_nonce"]), ("sha1-no-nonce", &["-no_nonce"])];
    for (name, extra) in variants {
        let req = tmp.join(format!("{name}.der"));
        let ok = std::process::Command::new("openssl")
            .arg("ocsp")
            .args(extra)
            .arg("-issuer")
            .arg(&issuer)
            .arg("-cert")
            .arg(&leaf)
            .arg("-reqout")
            .arg(&req)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if let (true, Ok(der)) = (ok, std::fs::read(&req)) {
            put(&out, "ocsp_request", name, &der);
            if name == "sha256" {
                let get = BASE64.encode(&der).replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
                put(&out, "ocsp_request", "get-path", format!("/{get}"));
            }
        } else {
            eprintln!("openssl ocsp not available: no {name} seed");
        }
    }
    // --- ocsp_answers: real bucket values (presigned with the fixed CA), and the re-signed form ---
    for (name, status) in [("good", tillit::ocsp::Status::Good), ("revoked", tillit::ocsp::Status::Revoked(crate::NOW - 10))] {
        let ders = tillit::ocsp::presign(&[crate::ca()], "4a1b2c3d4e5f60718293a4b5c6d7e8f9", status, crate::NOW - 300, crate::NOW + 3600);
        put(&out, "ocsp_answers", name, tillit::ocsp::copy::Published::new(&ders).to_bytes());
        put(&out, "ocsp_answers", &format!("presign-{name}"), format!("#{name}:4a1b2c3d4e5f60718293a4b5c6d7e8f9"));
    }
    // --- backup_file: the shape of a backup's first lines (a real one needs an estate) ---
    put(&out, "backup_file", "header", format!("{{\"type\":\"{}\",\"format\":1}}\n", tillit::backup::TYPE_HEADER));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("seeds written to {}", out.display());
}
