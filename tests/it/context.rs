//! `tillit context`: a `nats` CLI context for an enrolled identity names exactly its files, and
//! a client that connects with exactly the context's fields (URL, creds, cert, key, CA, inbox
//! prefix) works; without the inbox prefix, request-reply does not.

use crate::harness::*;
use futures::StreamExt;
use std::path::PathBuf;
use std::time::Duration;
use tillit::layout::{IdentityDir, NatsConfigDir};

/// Connect with a context file's fields, and nothing else.
async fn connect_with_context(ctx: &serde_json::Value, with_inbox_prefix: bool) -> Result<async_nats::Client, String> {
    let field = |k: &str| ctx[k].as_str().unwrap_or_else(|| panic!("context has no {k}: {ctx}")).to_string();
    let mut opts = async_nats::ConnectOptions::with_credentials_file(field("creds"))
        .await
        .map_err(|e| e.to_string())?
        .require_tls(true)
        .add_root_certificates(PathBuf::from(field("ca")))
        .add_client_certificate(PathBuf::from(field("cert")), PathBuf::from(field("key")))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(2)))
        .max_reconnects(Some(1));
    if with_inbox_prefix {
        opts = opts.custom_inbox_prefix(field("inbox_prefix"));
    }
    let urls: Vec<String> = field("url").split(',').map(str::to_string).collect();
    opts.connect(urls).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_context_for_an_enrolled_service_connects_as_it() {
    let e = Estate::init("context.example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let id_dir = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let id = IdentityDir::new(&id_dir);
    let info = tillit::identity::read_info(&id).unwrap();
    let cfg = NatsConfigDir::new(e.tmp.path().join("nats-config"));

    let out = tillit(&["context", "--identity", id_dir.to_str().unwrap(), "--dir", cfg.root().to_str().unwrap(), "--select", "--json"]);
    assert!(out.status.success(), "context: {}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["name"], "tillit-acme-shop-prod-orders");
    let path = cfg.context("tillit-acme-shop-prod-orders");
    assert_eq!(std::fs::read_to_string(cfg.selected()).unwrap(), "tillit-acme-shop-prod-orders");
    let ctx: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(ctx, shown["context"], "what it prints is what it wrote");

    // Every path exists and is the identity's own file.
    let abs = std::path::absolute(&id_dir).unwrap();
    let abs = IdentityDir::new(abs);
    for (k, want) in [("creds", abs.creds()), ("cert", abs.cert()), ("key", abs.key()), ("ca", abs.ca())] {
        let got = PathBuf::from(ctx[k].as_str().unwrap());
        assert!(got.is_absolute() && got.is_file(), "{k}: {got:?}");
        assert_eq!(got, want, "{k}");
        assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&want).unwrap());
    }
    assert_eq!(ctx["url"], info.nats_urls.join(","));
    assert_eq!(ctx["inbox_prefix"], info.inbox_prefix.as_str());
    assert!(ctx["description"].as_str().unwrap().contains(&info.id));

    // Connecting with exactly those fields works: its own subjects, and request-reply through its
    // own inbox (the server's no-responders status reaches the inbox subscription only if the
    // server let the identity subscribe it).
    let nc = connect_with_context(&ctx, true).await.expect("connect with the context's fields");
    let mut sub = nc.subscribe("shop.orders.ping").await.unwrap();
    nc.flush().await.unwrap();
    nc.publish("shop.orders.ping", "ping".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("own subject delivered").unwrap();
    assert_eq!(&m.payload[..], b"ping");
    barrier(&nc).await;

    // Without the inbox prefix the server refuses the reply subscription: no answer reaches it.
    let plain = connect_with_context(&ctx, false).await.expect("connects");
    let r = plain.request("tillit.v1.svc.barrier", "".into()).await;
    assert!(
        !matches!(&r, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "the default _INBOX is not this identity's: {r:?}"
    );

    // A second write refuses to overwrite; --force replaces; a bad name is refused.
    let again = tillit(&["context", "--identity", id_dir.to_str().unwrap(), "--dir", cfg.root().to_str().unwrap()]);
    assert!(!again.status.success() && stderr(&again).contains("--force"), "{}", stderr(&again));
    let forced = tillit(&["context", "--identity", id_dir.to_str().unwrap(), "--dir", cfg.root().to_str().unwrap(), "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let bad = tillit(&["context", "--identity", id_dir.to_str().unwrap(), "--dir", cfg.root().to_str().unwrap(), "--name", "../x"]);
    assert!(!bad.status.success() && !e.tmp.path().join("nats-config/x.json").exists(), "{}", stderr(&bad));
}
