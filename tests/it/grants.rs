//! Live permission changes and revocation against a running nats-server.

use crate::harness::*;
use futures::StreamExt;
use std::time::{Duration, Instant};
use tillit::client::Identity;

/// Publish on `shop.audit.x` until the client's own subscription sees it; how long that took.
async fn usable_within(c: &async_nats::Client, sub: &mut async_nats::Subscriber, started: Instant, within: Duration) -> Option<Duration> {
    while started.elapsed() < within {
        let _ = c.publish("shop.audit.x", "after".into()).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
            if &m.payload[..] == b"after" {
                return Some(started.elapsed());
            }
        }
    }
    None
}

/// Probe `shop.audit.x` until a probe no longer comes back; how long that took. A probe counts as
/// refused only when it is absent for 500 ms and so is a second one sent after it.
async fn denied_within(c: &async_nats::Client, sub: &mut async_nats::Subscriber, started: Instant, within: Duration) -> Option<Duration> {
    let mut n = 0u32;
    let mut absent = 0;
    while started.elapsed() < within || absent > 0 {
        n += 1;
        let probe = format!("probe-{n}");
        let _ = c.publish("shop.audit.x", probe.clone().into()).await;
        let _ = c.flush().await;
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut seen = false;
        while let Ok(Some(m)) = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), sub.next()).await {
            if m.payload[..] == *probe.as_bytes() {
                seen = true;
                break;
            }
        }
        if seen {
            if absent > 0 {
                return None; // refused once, then allowed again
            }
            continue;
        }
        absent += 1;
        if absent == 2 {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_reaches_a_connected_client_and_an_ungrant_takes_it_away() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let dir = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let session = Identity::load(&dir).unwrap().connect().await.unwrap();
    let c = session.client();
    let mut sub = c.subscribe("shop.audit.>").await.unwrap();
    c.publish("shop.audit.x", "before".into()).await.unwrap();
    c.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next()).await.is_err(), "not allowed before the grant");

    let started = Instant::now();
    let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.audit.>", "--sub", "shop.audit.>", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let g: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(g["granted_pub"], serde_json::json!(["shop.audit.>"]));
    // The same client, without new credentials, gains the subject within 2 s.
    let took = usable_within(&c, &mut sub, started, Duration::from_secs(2)).await.expect("granted subject not usable within 2s");
    eprintln!("grant to effect: {took:?}");
    // Its own namespace kept working throughout.
    let mut own = c.subscribe("shop.orders.>").await.unwrap();
    c.publish("shop.orders.y", "still".into()).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(2), own.next()).await.unwrap().is_some());

    let out = tillit(&["grants", "acme/shop/prod/orders", "--identity", &e.admin(), "--json"]);
    let g: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(g["sub"].as_array().unwrap().iter().any(|s| s == "shop.audit.>"), "{g}");

    let out = tillit(&["ungrant", "acme/shop/prod/orders", "--pub", "shop.audit.>", "--sub", "shop.audit.>", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The library client hears of the change and renews; the subject is gone within 2 s.
    let took = denied_within(&c, &mut sub, Instant::now(), Duration::from_secs(2)).await.expect("still allowed 2s after the ungrant");
    eprintln!("ungrant to effect: {took:?}");
}

/// A client that does not use the tillit library (no notifications, never renews) still gets a
/// grant and loses an ungrant within 2 s: when the grace period of the role's former key ends,
/// that key takes the new permissions and the server reconnects its users with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_the_library_follows_grants_within_two_seconds() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let dir = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&dir)).unwrap();
    let c = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await.unwrap();
    let mut sub = c.subscribe("shop.audit.>").await.unwrap();
    let started = Instant::now();
    let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.audit.>", "--sub", "shop.audit.>", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let took = usable_within(&c, &mut sub, started, Duration::from_secs(2)).await.expect("a plain client did not get the grant within 2s");
    eprintln!("grant to effect (plain client): {took:?}");
    let started = Instant::now();
    let out = tillit(&["ungrant", "acme/shop/prod/orders", "--pub", "shop.audit.>", "--sub", "shop.audit.>", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {}
    c.publish("shop.audit.x", "gone".into()).await.unwrap();
    c.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next()).await.is_err(), "still allowed 2s after the ungrant");
}

#[test]
fn refused_grants_change_nothing() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let admin = e.admin();
    let ok = tillit(&["grant", "acme/shop/prod/orders", "--sub", "shop.events.>", "--identity", &admin]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Nothing enrolled as that service yet: kept, with a word about a possible typo.
    assert!(stderr(&ok).contains("has never enrolled"), "{}", stderr(&ok));
    // Tokens into a file: 0600, never over an existing file.
    let file = e.tmp.path().join("t.tokens");
    let args = ["token", "create", "--identity", &admin, "--tenant", "acme", "--project", "shop", "--env", "prod", "--service", "orders", "--count", "2", "--out"];
    let out = tillit(&[&args[..], &[file.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions()) & 0o777, 0o600);
    let again = tillit(&[&args[..], &[file.to_str().unwrap()]].concat());
    assert!(!again.status.success() && stderr(&again).contains("never written over"), "{}", stderr(&again));
    let before = stdout(&tillit(&["grants", "acme/shop/prod/orders", "--identity", &admin, "--json"]));
    for (subj, needle) in [
        (">", "everything"),
        ("*.>", "everything"),
        ("$SYS.>", "system subject"),
        ("$JS.API.>", "system subject"),
        ("tillit.>", "tillit's own"),
        ("_INBOX.>", "inbox"),
        ("a..b", "malformed"),
        ("a.>.b", "malformed"),
    ] {
        let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", subj, "--identity", &admin]);
        assert!(!out.status.success(), "{subj} was granted");
        assert!(stderr(&out).contains(needle), "{subj}: {}", stderr(&out));
    }
    // Defaults cannot be taken away; what was never granted cannot be ungranted.
    let out = tillit(&["ungrant", "acme/shop/prod/orders", "--pub", "shop.orders.>", "--identity", &admin]);
    assert!(stderr(&out).contains("default permission"), "{}", stderr(&out));
    let out = tillit(&["ungrant", "acme/shop/prod/orders", "--sub", "never.granted", "--identity", &admin]);
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
    // Bad service names never reach the server.
    let out = tillit(&["grant", "acme/shop/*/orders", "--pub", "x.y", "--identity", &admin]);
    assert!(!out.status.success());
    assert_eq!(stdout(&tillit(&["grants", "acme/shop/prod/orders", "--identity", &admin, "--json"])), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_drops_the_connection_and_the_identity_never_comes_back() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let dir = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let id = Identity::load(&dir).unwrap();
    let session = id.connect().await.unwrap();
    let c = session.client();
    c.flush().await.unwrap();

    let started = Instant::now();
    let out = tillit(&["revoke", "acme/shop/prod/orders", "--reason", "key leaked", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["revoked"].as_array().unwrap().len(), 1);
    let mut dropped = false;
    while started.elapsed() < Duration::from_secs(5) {
        if c.connection_state() != async_nats::connection::State::Connected {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(dropped, "revoked connection still up");
    eprintln!("revoke to disconnect: {:?}", started.elapsed());
    // Its credentials cannot connect again, and it cannot renew.
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&dir)).unwrap();
    let err = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await.unwrap_err();
    // Refused at the handshake (its certificate's answer is `revoked` now, no cache keeps it
    // good) or, failing that, by its revoked JWT.
    let e2 = err.to_string().to_lowercase();
    assert!(e2.contains("authorization violation") || e2.contains("revoked") || e2.contains("badcertificate"), "{err}");
    let out = tillit(&["renew", "--identity", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let out = tillit(&["list", "--identity", &e.admin(), "--json"]);
    let l: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let svc = l["identities"].as_array().unwrap().iter().find(|i| i["id"] == "spiffe://example.org/acme/shop/prod/orders").unwrap();
    assert_eq!(svc["state"], "revoked");
    assert!(svc["revoked_at"].is_string());
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    let st: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(st["counts"]["revoked"], 1, "{st}");
    assert_eq!(st["counts"]["active"], 1, "the admin");
    // Revoking again: nothing active left.
    let out = tillit(&["revoke", "acme/shop/prod/orders", "--identity", &e.admin()]);
    assert!(stderr(&out).contains("no active identity"), "{}", stderr(&out));
    // The service comes back only by enrolling again, with a new key.
    let dir2 = enroll_one(&e, "acme/shop/prod/orders", "orders-2");
    let again = Identity::load(&dir2).unwrap();
    assert_ne!(again.info().user_public_key, id.info().user_public_key);
    again.connect().await.expect("a fresh enrollment connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_loses_no_message_while_its_permissions_change() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let audit = enroll_one(&e, "acme/shop/prod/audit", "audit");
    // The subscriber is another service (another role, not bounced) allowed to read orders' subjects.
    let out = tillit(&["grant", "acme/shop/prod/audit", "--sub", "shop.orders.>", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sub_session = Identity::load(&audit).unwrap().connect().await.unwrap();
    // Started after its own grant: its JWT on disk is from the role's former key, whose old
    // template holds for the grace period; renewing moves it to the new key at once.
    sub_session.renew_now().await.unwrap();
    let mut sub = sub_session.client().subscribe("shop.orders.seq").await.unwrap();
    barrier(&sub_session.client()).await;
    let publisher = Identity::load(&orders).unwrap().connect().await.unwrap();
    let c = publisher.client();
    const N: u32 = 1500;
    // A steady publisher (one message per millisecond). On each grant the library is notified,
    // renews onto the role's new key, flushes and reconnects by itself: the server never closes
    // the connection under it, so nothing in flight is lost.
    let pub_task = tokio::spawn(async move {
        for i in 0..N {
            c.publish("shop.orders.seq", i.to_string().into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.flush().await.unwrap();
    });
    // Two grants to orders while it publishes.
    for s in ["shop.extra1.>", "shop.extra2.>"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", s, "--identity", &e.admin()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    pub_task.await.unwrap();
    // Everything arrives, in order.
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), sub.next()).await {
        got.push(std::str::from_utf8(&m.payload).unwrap().parse::<u32>().unwrap());
        if got.last() == Some(&(N - 1)) {
            break;
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
    assert_eq!(got.last(), Some(&(N - 1)), "the publisher is back and its last message arrived");
    let lost = N as usize - got.len();
    eprintln!("lost across two grants: {lost} of {N}");
    assert_eq!(lost, 0, "the application lost {lost} of {N} messages across two grants");
}
