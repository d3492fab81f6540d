//! Service-to-service calls a callee can trust (caller tokens), against real servers: the
//! callee follows its account's key sets from JetStream and verifies offline.

use crate::harness::*;
use futures::StreamExt;
use std::time::Duration;
use tillit::client::session::Session;
use tillit::layout::IdentityDir;
use tillit::service::{CallerRefusal, Callers};

fn now() -> i64 {
    tillit::clock::Clock::now_unix(&tillit::clock::SystemClock)
}

/// Wait until `check` holds for the follower (the control plane publishes key sets as
/// enrollments and revocations commit).
async fn until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_trusts_what_orders_signs_and_nothing_else() {
    let e = Estate::init("callers.example");
    let nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    // The OCSP responder next to the hub: new connections keep working while serve is down.
    let _responder = e.start_responder();
    // orders may publish to payments' subjects (granted before it enrolls: its JWT carries it).
    assert!(tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.payments.>", "--pub", "shop.billing.>", "--identity", &e.admin()]).status.success());
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let billing = enroll_one(&e, "acme/shop/prod/billing", "billing");
    let payments = enroll_one(&e, "acme/shop/prod/payments", "payments");
    let globex = enroll_one(&e, "globex/shop/prod/orders", "globex-orders");

    // The callee: follows its account's key sets, answers `shop.payments.charge` with who called.
    let callee = Session::connect(&IdentityDir::new(&payments), None).await.unwrap();
    let callers = Callers::follow(&callee).await.expect("follow the key sets");
    let orders_id = "spiffe://callers.example/acme/shop/prod/orders";
    assert!(until(Duration::from_secs(10), || callers.issuers() >= 3).await, "acme's three services' key sets arrive");
    let mut sub = callee.client().subscribe("shop.payments.charge").await.unwrap();
    let verdicts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Result<String, CallerRefusal>>::new()));
    {
        let (callers, client, verdicts) = (callers.clone(), callee.client(), verdicts.clone());
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let v = callers.verify_message(&m, now()).map(|c| c.id);
                let answer = match &v {
                    Ok(id) => format!("ok {id}"),
                    Err(e) => format!("refused {e}"),
                };
                verdicts.lock().unwrap().push(v);
                if let Some(r) = m.reply {
                    let _ = client.publish(r, answer.into()).await;
                }
            }
        });
    }
    barrier(&callee.client()).await;

    // The key sets are the control plane's to write: a service's put, stream delete or purge is refused.
    let kv = async_nats::jetstream::new(callee.client()).get_key_value(tillit::service::CALLERS_BUCKET).await.unwrap();
    let forged_set = serde_json::json!({ "iss": orders_id, "keys": [] }).to_string();
    assert!(kv.put("shop.orders", forged_set.into()).await.is_err(), "a service wrote a key set");
    assert!(async_nats::jetstream::new(callee.client()).delete_stream("KV_TILLIT_CALLERS").await.is_err(), "a service deleted the bucket");
    assert!(until(Duration::from_secs(1), || callers.issuers() >= 3).await, "nothing was lost");

    // orders calls: accepted, and the answer comes back (services may reply).
    let caller = Session::connect(&IdentityDir::new(&orders), None).await.unwrap();
    let r = match caller.request_as("shop.payments.charge", "42".into()).await {
        Ok(r) => r,
        Err(err) => panic!("payments answers: {err}; payments saw {:?}\n{}", verdicts.lock().unwrap(), nats.log_text().lines().filter(|l| l.contains("iolation") || l.contains("rror")).collect::<Vec<_>>().join("\n")),
    };
    assert_eq!(String::from_utf8_lossy(&r.payload), format!("ok {orders_id}"));

    // billing signs a token claiming to be orders, with its own key: refused, named.
    let b = tillit::identity::load(&IdentityDir::new(&billing)).unwrap();
    let bkey = nkeys::KeyPair::from_seed(b.user_seed.expose()).unwrap();
    let forged = tillit::service::sign(&bkey, orders_id, "spiffe://callers.example/acme/shop/prod/payments", "shop.payments.charge", 30, now()).unwrap();
    let err = callers.verify(Some(&forged), "shop.payments.charge", now()).unwrap_err();
    assert!(matches!(err, CallerRefusal::KeyOfAnotherIssuer { .. }), "{err:?}");
    // A caller of another tenant is unknown here (its account's sets are not this one's).
    let g = tillit::identity::load(&IdentityDir::new(&globex)).unwrap();
    let gkey = nkeys::KeyPair::from_seed(g.user_seed.expose()).unwrap();
    let other = tillit::service::sign(&gkey, &g.info.id, "spiffe://callers.example/acme/shop/prod/payments", "shop.payments.charge", 30, now()).unwrap();
    assert!(matches!(callers.verify(Some(&other), "shop.payments.charge", now()), Err(CallerRefusal::UnknownIssuer(_))));

    // With the live sets: another audience, another subject, expired, replayed: each refused, named.
    let okey0 = nkeys::KeyPair::from_seed(tillit::identity::load(&IdentityDir::new(&orders)).unwrap().user_seed.expose()).unwrap();
    let payments_id = "spiffe://callers.example/acme/shop/prod/payments";
    let t = tillit::service::sign(&okey0, orders_id, "spiffe://callers.example/acme/shop/prod/billing", "shop.payments.charge", 30, now()).unwrap();
    assert!(matches!(callers.verify(Some(&t), "shop.payments.charge", now()), Err(CallerRefusal::Audience(_))));
    let t = tillit::service::sign(&okey0, orders_id, payments_id, "shop.payments.refund", 30, now()).unwrap();
    assert!(matches!(callers.verify(Some(&t), "shop.payments.charge", now()), Err(CallerRefusal::Subject { .. })));
    let t = tillit::service::sign(&okey0, orders_id, payments_id, "shop.payments.charge", 5, now() - 10).unwrap();
    assert_eq!(callers.verify(Some(&t), "shop.payments.charge", now()), Err(CallerRefusal::Expired));
    let t = tillit::service::sign(&okey0, orders_id, payments_id, "shop.payments.charge", 30, now()).unwrap();
    assert!(callers.verify(Some(&t), "shop.payments.charge", now()).is_ok());
    assert!(matches!(callers.verify(Some(&t), "shop.payments.charge", now()), Err(CallerRefusal::Replayed(_))));
    // A request with no token at all: unauthenticated.
    let r = caller.client().request("shop.payments.charge", "1".into()).await.expect("answered");
    assert_eq!(String::from_utf8_lossy(&r.payload), "refused no caller token on the request");

    // A new instance of orders (a new nkey) is accepted as soon as it enrolled.
    let orders2 = enroll_one(&e, "acme/shop/prod/orders", "orders-2");
    let o2 = tillit::identity::load(&IdentityDir::new(&orders2)).unwrap();
    let o2key = nkeys::KeyPair::from_seed(o2.user_seed.expose()).unwrap();
    let fresh = || tillit::service::sign(&o2key, orders_id, "spiffe://callers.example/acme/shop/prod/payments", "shop.payments.charge", 30, now()).unwrap();
    assert!(until(Duration::from_secs(2), || callers.verify(Some(&fresh()), "shop.payments.charge", now()).is_ok()).await, "a new instance within 2 s");

    // Revoked: every instance of orders is refused within 2 s of `tillit revoke`.
    let okey = nkeys::KeyPair::from_seed(tillit::identity::load(&IdentityDir::new(&orders)).unwrap().user_seed.expose()).unwrap();
    let signed = || tillit::service::sign(&okey, orders_id, "spiffe://callers.example/acme/shop/prod/payments", "shop.payments.charge", 30, now()).unwrap();
    let out = tillit(&["revoke", "acme/shop/prod/orders", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t0 = std::time::Instant::now();
    assert!(
        until(Duration::from_secs(2), || matches!(callers.verify(Some(&signed()), "shop.payments.charge", now()), Err(CallerRefusal::Revoked { .. }))).await,
        "a revoked caller is refused within 2 s"
    );
    eprintln!("revoked caller refused after {:?}", t0.elapsed());

    // With serve stopped, a callee starting now still loads the sets and verifies.
    assert!(serve.terminate(Duration::from_secs(10)).success());
    let b2 = Session::connect(&IdentityDir::new(&billing), None).await.unwrap();
    let late = Callers::follow(&b2).await.expect("follow with serve down");
    let p = tillit::identity::load(&IdentityDir::new(&payments)).unwrap();
    let pkey = nkeys::KeyPair::from_seed(p.user_seed.expose()).unwrap();
    let to_billing = tillit::service::sign(&pkey, &p.info.id, &b.info.id, "shop.billing.x", 30, now()).unwrap();
    let c = late.verify(Some(&to_billing), "shop.billing.x", now()).expect("verified with serve down");
    assert_eq!((c.service.as_str(), c.instance.as_str()), ("payments", pkey.public_key().as_str()));
    let revoked = tillit::service::sign(&okey, orders_id, &b.info.id, "shop.billing.x", 30, now()).unwrap();
    assert!(matches!(late.verify(Some(&revoked), "shop.billing.x", now()), Err(CallerRefusal::Revoked { .. })), "still revoked with serve down");
}

/// A role from before caller tokens (its template lacks the key sets' read subjects and
/// replies) gets them in place when `serve` starts, and its service then follows the key sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_role_is_given_the_new_defaults_at_start() {
    let e = Estate::init("upgrade-callers.example");
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let svc = enroll_one(&e, "acme/shop/prod/payments", "payments");
    assert!(serve.terminate(Duration::from_secs(10)).success());
    let sid = tillit::names::ServiceId::parse("acme/shop/prod/payments").unwrap();
    let key;
    {
        let est = tillit::estate::Estate::open(e.dir.clone(), std::sync::Arc::new(tillit::clock::SystemClock)).unwrap();
        let mut role = est.role(&sid).unwrap().unwrap();
        key = role.key.clone();
        role.permissions.publish.allow.retain(|s| !s.starts_with("$JS"));
        role.permissions.resp = None;
        let mut b = tillit::store::Batch::new();
        b.put_json(tillit::store::Space::Roles, tillit::estate::RoleRecord::store_key(&sid), &role).unwrap();
        // An estate from before: it never noted which defaults every role was given.
        b.delete(tillit::store::Space::Meta, "role_defaults");
        est.store().commit(b).unwrap();
    }
    let mut serve2 = e.start_serve_ready();
    let audit = stdout(&tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "30"]));
    assert!(audit.contains("\"action\":\"role.upgrade\""), "{audit}");
    let grants = stdout(&tillit(&["grants", "acme/shop/prod/payments", "--identity", &e.admin(), "--json"]));
    let g: serde_json::Value = serde_json::from_str(&grants).unwrap();
    assert!(g["pub"].as_array().unwrap().iter().any(|s| s == "$JS.API.CONSUMER.CREATE.KV_TILLIT_CALLERS"), "{g}");
    assert_eq!(g["granted_pub"], serde_json::json!([]), "the new defaults are not grants: {g}");
    // Same key (no rekey): the service's JWT keeps working, and it follows the key sets.
    let est_key = {
        let out = tillit(&["list", "--identity", &e.admin(), "--json"]);
        assert!(out.status.success());
        key.clone()
    };
    assert_eq!(est_key, key);
    let session = Session::connect(&IdentityDir::new(&svc), None).await.unwrap();
    let callers = Callers::follow(&session).await.expect("follows after the upgrade");
    assert!(until(Duration::from_secs(10), || callers.issuers() >= 1).await, "its own key set arrives:\n{}", serve2.log_text());
    // The pass is noted: the next start does not read every role again.
    assert!(serve2.terminate(Duration::from_secs(10)).success());
    let est = tillit::estate::Estate::open(e.dir.clone(), std::sync::Arc::new(tillit::clock::SystemClock)).unwrap();
    assert!(est.meta_flag::<String>("role_defaults").unwrap().is_some_and(|f| f.len() == 64));
}
