//! Auth callout mode against real servers: tillit decides every connection to a tenant
//! account from the verified certificate and the nkey the client proved, which must be one live
//! identity's; switching modes needs no re-enrollment.

use crate::harness::*;
use futures::StreamExt;
use std::time::Duration;

/// Publish on a subject the identity may use and read it back: the connection is live and
/// carries the identity's own permissions.
async fn round_trip(c: &async_nats::Client, subject: &str) -> bool {
    let Ok(mut sub) = c.subscribe(subject.to_string()).await else { return false };
    barrier(c).await;
    if c.publish(subject.to_string(), "ping".into()).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(Duration::from_secs(2), sub.next()).await, Ok(Some(m)) if m.payload.as_ref() == b"ping")
}

fn metrics(e: &Estate) -> String {
    http_get(e.http_port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_binds_the_certificate_to_the_nkey_and_switching_modes_needs_no_reenrollment() {
    let e = Estate::init_args("callout.example", &["--auth", "callout"]);
    let nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let pay = enroll_one(&e, "acme/shop/prod/payments", "payments");

    // Each identity with its own certificate and creds: admitted, with its own permissions
    // (its own namespace works; another service's is not its to read).
    let c = connect_with_cert_of(&nats.url(), &orders, &orders).await.expect("orders with its own cert and creds");
    assert!(round_trip(&c, "shop.orders.ping").await, "orders uses its own subjects");
    assert!(!round_trip(&c, "shop.payments.ping").await, "orders got payments' subjects");
    drop(c);
    let p = connect_with_cert_of(&nats.url(), &pay, &pay).await.expect("payments with its own cert and creds");
    assert!(round_trip(&p, "shop.payments.ping").await);
    drop(p);

    // payments' certificate with orders' creds (and orders' nkey): refused, and the server says why.
    let err = connect_with_cert_of(&nats.url(), &pay, &orders).await.expect_err("cert of one identity with the nkey of another");
    eprintln!("refused: {err}");
    assert!(
        wait_for(Duration::from_secs(5), || nats.log_text().contains("both must be one identity")).is_some(),
        "nats-server logs tillit's reason:\n{}",
        nats.log_text()
    );
    let m = metrics(&e);
    assert!(m.contains("tillit_callout_decisions_total{reason=\"identity_mismatch\"}"), "{m}");
    assert!(m.contains("tillit_callout_decisions_total{reason=\"admitted\"}"), "{m}");
    // `status` shows the mode and this replica's decisions.
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status --json");
    let auth = &st["auth"];
    assert_eq!(auth["mode"], "callout", "{st}");
    assert!(auth["admitted"].as_u64().unwrap_or(0) >= 2 && auth["refused"].as_u64().unwrap_or(0) >= 1, "{auth}");
    assert!(auth["p99_ms"].as_f64().unwrap_or(-1.0) > 0.0, "{auth}");
    let text = stdout(&tillit(&["status", "--identity", &e.admin()]));
    assert!(text.contains("auth           callout since"), "{text}");

    // JWT mode (switched offline, serve restarted, nobody re-enrolls): the same identity dirs
    // connect, and the mixed pair is accepted: nats-server checks the JWT and the certificate
    // separately. This is the hole callout mode closes.
    serve.terminate(Duration::from_secs(10));
    let out = tillit(&["auth-mode", "--data-dir", e.data(), "jwt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut serve = e.start_serve_ready();
    let back = |u: &str, who: &std::path::Path| {
        let (u, who) = (u.to_string(), who.to_path_buf());
        async move {
            for _ in 0..50 {
                if connect_with_cert_of(&u, &who, &who).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(back(&nats.url(), &orders).await, "orders connects in JWT mode with the identity dir it enrolled with in callout mode");
    let mixed = connect_with_cert_of(&nats.url(), &pay, &orders).await;
    assert!(mixed.is_ok(), "JWT mode accepts another identity's certificate with these creds (documented): {mixed:?}");
    drop(mixed);

    // And back to callout mode: refused again, the services still connect.
    serve.terminate(Duration::from_secs(10));
    let out = tillit(&["auth-mode", "--data-dir", e.data(), "callout"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _serve = e.start_serve_ready();
    assert!(back(&nats.url(), &orders).await, "orders connects in callout mode again");
    assert!(connect_with_cert_of(&nats.url(), &pay, &orders).await.is_err(), "the mixed pair is refused again");

    // Revocation: new connections refused at once; the live one dropped within 2 s.
    let live = connect_with_cert_of(&nats.url(), &orders, &orders).await.expect("orders");
    assert!(round_trip(&live, "shop.orders.ping").await);
    let t0 = std::time::Instant::now();
    let out = tillit(&["revoke", "acme/shop/prod/orders", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dropped = wait_for(Duration::from_secs(3), || live.connection_state() != async_nats::connection::State::Connected);
    let took = t0.elapsed();
    assert!(dropped.is_some(), "the revoked identity's live connection is still up");
    eprintln!("revoked connection dropped {took:?} after `tillit revoke` started");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(connect_with_cert_of(&nats.url(), &orders, &orders).await.is_err(), "a revoked identity connects");
    assert!(connect_with_cert_of(&nats.url(), &pay, &pay).await.is_ok(), "others are untouched");
}

/// In callout mode a connection's permissions are the callout's answer, which no account JWT
/// change reaches: an ungrant must still take a subject away from a client that never renews
/// (no tillit library) within the grace, as it does in JWT mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungrant_reaches_connections_that_never_renew() {
    let e = Estate::init_args("callout-grants.example", &["--auth", "callout"]);
    let nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let pay = enroll_one(&e, "acme/shop/prod/payments", "payments");
    for (svc, flags) in [("acme/shop/prod/orders", ["--sub", "shop.events.>"]), ("acme/shop/prod/payments", ["--pub", "shop.events.>"])] {
        let out = tillit(&["grant", svc, flags[0], flags[1], "--identity", &e.admin()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Granted: applies to new connections at once.
    let listener = connect_with_cert_of(&nats.url(), &orders, &orders).await.expect("orders");
    let publisher = connect_with_cert_of(&nats.url(), &pay, &pay).await.expect("payments");
    let mut sub = listener.subscribe("shop.events.created").await.unwrap();
    barrier(&listener).await;
    publisher.publish("shop.events.created", "one".into()).await.unwrap();
    publisher.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
    assert!(matches!(&got, Ok(Some(m)) if m.payload.as_ref() == b"one"), "the grant reached a new connection: {got:?}");

    // Ungranted: the listener (a plain client: it never renews) loses the subject within the
    // grace, although nothing it holds changed.
    let out = tillit(&["ungrant", "acme/shop/prod/orders", "--sub", "shop.events.>", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher.publish("shop.events.created", "two".into()).await.unwrap();
    publisher.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
    assert!(!matches!(&got, Ok(Some(m)) if m.payload.as_ref() == b"two"), "an ungranted subject still delivers to a connection from before: {got:?}");
    // And it is connected again, with its current permissions (its own namespace works).
    let again = connect_with_cert_of(&nats.url(), &orders, &orders).await.expect("orders reconnects");
    let mut own = again.subscribe("shop.orders.x").await.unwrap();
    barrier(&again).await;
    again.publish("shop.orders.x", "three".into()).await.unwrap();
    assert!(matches!(tokio::time::timeout(Duration::from_secs(2), own.next()).await, Ok(Some(_))));
}
