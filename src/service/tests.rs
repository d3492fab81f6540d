use super::*;

const NOW: i64 = 1_780_000_000;
const TD: &str = "example.org";
const A: &str = "spiffe://example.org/acme/shop/prod/orders";
const B: &str = "spiffe://example.org/acme/shop/prod/billing";
const ME: &str = "spiffe://example.org/acme/shop/prod/payments";
const SUBJ: &str = "shop.payments.charge";

fn doc(iss: &str, keys: &[(&nkeys::KeyPair, i64)], revoked: &[&nkeys::KeyPair]) -> KeySetDoc {
    KeySetDoc {
        iss: iss.into(),
        keys: keys.iter().map(|(k, exp)| KeySetDoc::jwk(&k.public_key(), *exp).unwrap()).collect(),
        revoked: revoked.iter().map(|k| k.public_key()).collect(),
    }
}

/// A token with its parts edited: header, claims (as JSON), and whether to re-sign.
fn forged(key: &nkeys::KeyPair, header: serde_json::Value, claims: serde_json::Value) -> String {
    let mut out = format!("{}.{}", BASE64URL_NOPAD.encode(header.to_string().as_bytes()), BASE64URL_NOPAD.encode(claims.to_string().as_bytes()));
    let sig = key.sign(out.as_bytes()).unwrap();
    out.push('.');
    out.push_str(&BASE64URL_NOPAD.encode(&sig));
    out
}

fn claims(iss: &str, aud: &str, sub: &str, iat: i64, exp: i64) -> serde_json::Value {
    serde_json::json!({ "iss": iss, "aud": aud, "sub": sub, "iat": iat, "exp": exp, "jti": uuid::Uuid::new_v4().to_string() })
}

#[test]
fn refusal_table() {
    let (a, a2, b, gone, old) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let v = Callers::new(ME, TD);
    v.set_keys(A, doc(A, &[(&a, NOW + 3600), (&old, NOW - 1)], &[&gone]).key_set());
    v.set_keys(B, doc(B, &[(&b, NOW + 3600)], &[]).key_set());
    let hdr = |k: &nkeys::KeyPair| serde_json::json!({ "alg": "EdDSA", "typ": CALLER_TYP, "kid": k.public_key() });

    // The good case, and a second instance of the same service.
    let ok = sign(&a, A, ME, SUBJ, 30, NOW).unwrap();
    let c = v.verify(Some(&ok), SUBJ, NOW).unwrap();
    assert_eq!((c.tenant.as_str(), c.project.as_str(), c.env.as_str(), c.service.as_str()), ("acme", "shop", "prod", "orders"));
    assert_eq!(c.instance, a.public_key());
    type Case = (&'static str, String, fn(&CallerRefusal) -> bool);
    let cases: Vec<Case> = vec![
        ("A's key claiming to be B", sign(&a, B, ME, SUBJ, 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::KeyOfAnotherIssuer { .. })),
        ("a key nobody published", sign(&a2, A, ME, SUBJ, 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::UnknownKey { .. })),
        ("an issuer with no keys here", sign(&a, "spiffe://example.org/globex/web/prod/api", ME, SUBJ, 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::UnknownIssuer(_))),
        ("a revoked key", sign(&gone, A, ME, SUBJ, 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::Revoked { .. })),
        ("an expired key", sign(&old, A, ME, SUBJ, 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::UnknownKey { .. })),
        ("another audience", sign(&a, A, B, SUBJ, 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::Audience(_))),
        ("another subject", sign(&a, A, ME, "shop.payments.refund", 30, NOW).unwrap(), |e| matches!(e, CallerRefusal::Subject { .. })),
        ("expired", sign(&a, A, ME, SUBJ, 10, NOW - 20).unwrap(), |e| *e == CallerRefusal::Expired),
        ("living too long", forged(&a, hdr(&a), claims(A, ME, SUBJ, NOW, NOW + 3600)), |e| matches!(e, CallerRefusal::Lifetime(_))),
        ("from the future", forged(&a, hdr(&a), claims(A, ME, SUBJ, NOW + 120, NOW + 150)), |e| matches!(e, CallerRefusal::Lifetime(_))),
        ("alg none", forged(&a, serde_json::json!({ "alg": "none", "typ": CALLER_TYP, "kid": a.public_key() }), claims(A, ME, SUBJ, NOW, NOW + 30)), |e| matches!(e, CallerRefusal::Algorithm(_))),
        ("another typ", forged(&a, serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": a.public_key() }), claims(A, ME, SUBJ, NOW, NOW + 30)), |e| matches!(e, CallerRefusal::Malformed(_))),
        ("signed by another key", forged(&b, hdr(&a), claims(A, ME, SUBJ, NOW, NOW + 30)), |e| *e == CallerRefusal::Signature),
        ("garbage", "a.b".to_string(), |e| matches!(e, CallerRefusal::Malformed(_))),
        ("not base64", "!!.??.**".to_string(), |e| matches!(e, CallerRefusal::Malformed(_))),
        ("huge", "x".repeat(MAX_CALLER_TOKEN_BYTES + 1), |e| matches!(e, CallerRefusal::Malformed(_))),
    ];
    for (what, token, want) in cases {
        let got = v.verify(Some(&token), SUBJ, NOW).unwrap_err();
        assert!(want(&got), "{what}: {got:?}");
    }
    // The same token twice: a replay. No token at all: unauthenticated.
    assert!(matches!(v.verify(Some(&ok), SUBJ, NOW), Err(CallerRefusal::Replayed(_))));
    assert_eq!(v.verify(None, SUBJ, NOW), Err(CallerRefusal::Missing));
    // A tampered claim breaks the signature.
    let fresh = sign(&a, A, ME, SUBJ, 30, NOW).unwrap();
    let mut parts: Vec<String> = fresh.split('.').map(str::to_string).collect();
    parts[1] = BASE64URL_NOPAD.encode(claims(A, ME, SUBJ, NOW, NOW + 30).to_string().as_bytes());
    assert_eq!(v.verify(Some(&parts.join(".")), SUBJ, NOW), Err(CallerRefusal::Signature));
}

#[test]
fn a_renewed_instance_with_a_new_key_is_accepted_once_its_set_says_so() {
    let (a, renewed) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let v = Callers::new(ME, TD);
    v.set_keys(A, doc(A, &[(&a, NOW + 60)], &[]).key_set());
    let t = sign(&renewed, A, ME, SUBJ, 30, NOW).unwrap();
    assert!(matches!(v.verify(Some(&t), SUBJ, NOW), Err(CallerRefusal::UnknownKey { .. })));
    v.set_keys(A, doc(A, &[(&a, NOW + 60), (&renewed, NOW + 86_400)], &[]).key_set());
    let t = sign(&renewed, A, ME, SUBJ, 30, NOW).unwrap();
    assert_eq!(v.verify(Some(&t), SUBJ, NOW).unwrap().instance, renewed.public_key());
    v.remove(A);
    let t = sign(&renewed, A, ME, SUBJ, 30, NOW).unwrap();
    assert!(matches!(v.verify(Some(&t), SUBJ, NOW), Err(CallerRefusal::UnknownIssuer(_))));
}

#[test]
fn a_key_set_keeps_only_keys_that_match_their_ids() {
    let (a, b) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let mut d = doc(A, &[(&a, NOW + 60)], &[]);
    // A JWK whose x is b's key but whose kid says a: dropped. An account key: dropped.
    let mut lying = KeySetDoc::jwk(&a.public_key(), NOW + 60).unwrap();
    lying["x"] = KeySetDoc::jwk(&b.public_key(), 0).unwrap()["x"].clone();
    d.keys.push(lying);
    d.keys.push(KeySetDoc::jwk(&nkeys::KeyPair::new_account().public_key(), NOW + 60).unwrap());
    d.keys.push(serde_json::json!({ "kty": "RSA" }));
    let set = d.key_set();
    assert_eq!(set.keys.len(), 1);
    assert!(set.keys.contains_key(&a.public_key()));
    let back: KeySetDoc = serde_json::from_str(&serde_json::to_string(&doc(A, &[(&a, NOW)], &[&b])).unwrap()).unwrap();
    assert_eq!(back.revoked, vec![b.public_key()]);
}

#[test]
fn allow_list_table() {
    let c = |s: &str| {
        let sid = crate::names::ServiceId::parse(s).unwrap();
        Caller { id: sid.spiffe_id(TD), tenant: sid.tenant, project: sid.project, env: sid.env, service: sid.service, instance: "U".into() }
    };
    let allow = Allow::parse(&["acme/shop/prod/orders", "acme/ops/*/*", "*/audit/prod/reader"]).unwrap();
    let cases = [
        ("acme/shop/prod/orders", true),
        ("acme/shop/prod/billing", false),
        ("acme/shop/dev/orders", false),
        ("acme/ops/dev/cron", true),
        ("acme/ops/prod/anything", true),
        ("globex/audit/prod/reader", true),
        ("globex/audit/dev/reader", false),
    ];
    for (who, want) in cases {
        assert_eq!(allow.allows(&c(who)), want, "{who}");
    }
    assert_eq!(allow.authorize(Err(CallerRefusal::Missing)), Err(CallerRefusal::Missing), "no identity: unauthenticated");
    assert!(matches!(allow.authorize(Ok(c("acme/shop/prod/billing"))), Err(CallerRefusal::NotAllowed(_))));
    assert!(allow.authorize(Ok(c("acme/shop/prod/orders"))).is_ok());
    for bad in ["acme/shop/prod", "acme/Shop/prod/x", "a/b/c/d/e", ""] {
        assert!(Allow::parse(&[bad]).is_err(), "{bad}");
    }
}
