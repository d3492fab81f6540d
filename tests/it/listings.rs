//! Listings page: a reply never has to hold the whole estate. Against a hub whose max_payload
//! is small enough that one reply cannot hold every identity.

use crate::harness::*;
use futures::stream::{self, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_and_the_cli_follows_every_page_by_itself() {
    let e = Estate::init("listings.example");
    // The hub as generated, with a 24 KiB max_payload: about 60 identities no longer fit.
    let conf = e.dir.root().join("nats/small-payload.conf");
    let text = std::fs::read_to_string(e.dir.server_conf()).unwrap();
    std::fs::write(&conf, format!("{text}\nmax_payload: 24576\n")).unwrap();
    let nats = NatsServer::start(&conf, e.nats_port);
    let serve = e.start_serve_ready();
    let admin_dir = e.admin();
    let admin = tillit::client::TillitClient::connect_dir(&tillit::layout::IdentityDir::new(std::path::Path::new(&e.admin())), Some(&nats.url())).await.unwrap();
    // (a token is about 4 KB: five per reply)
    let tokens: Vec<String> = (0..20).flat_map(|_| create_tokens(&e, "acme/shop/prod/orders", 5, "10m")).collect();
    let clock: tillit::clock::SharedClock = std::sync::Arc::new(tillit::clock::SystemClock);
    let root = e.tmp.path().join("many");
    let enrolled: Vec<_> = stream::iter(tokens.iter().enumerate())
        .map(|(i, t)| {
            let (clock, dir) = (clock.clone(), root.join(format!("orders-{i}")));
            async move { tillit::client::enroll::enroll(t, &dir, None, clock).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assert!(enrolled.iter().all(|r| r.is_ok()), "{:?}\n{}", enrolled.iter().find(|r| r.is_err()), serve.log_text());

    // Everything at once no longer fits: a typed refusal that says how to page, not a cut list.
    let all = admin.call::<tillit::proto::List>(tillit::proto::ListRequest::default()).await;
    let err = all.expect_err("one reply cannot hold them").to_string();
    assert!(err.contains("limit_exceeded") && err.contains("by pages with `limit` and `after`"), "{err}");

    // The CLI follows the pages by itself.
    let out = tillit(&["list", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ids: Vec<String> = v["identities"].as_array().unwrap().iter().map(|i| format!("{} {}", i["id"].as_str().unwrap(), i["user_public_key"].as_str().unwrap())).collect();
    assert!(ids.len() > 100, "every identity: {}", ids.len());
    assert!(v.get("next").is_none(), "no cursor once every page was read");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "in order, none twice");

    // One page at a time, by hand: the same identities, in the same order.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["list", "--identity", admin_dir.as_str(), "--json", "--limit", "17"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let out = tillit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let page = v["identities"].as_array().unwrap();
        assert!(page.len() <= 17);
        paged.extend(page.iter().map(|i| format!("{} {}", i["id"].as_str().unwrap(), i["user_public_key"].as_str().unwrap())));
        pages += 1;
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, ids, "the pages put together are the list");
    assert_eq!(pages, ids.len().div_ceil(17));
    // Text output says where the next page starts.
    let out = tillit(&["list", "--identity", &e.admin(), "--limit", "3"]);
    assert_eq!(stdout(&out).lines().count(), 3);
    assert!(stderr(&out).contains("more: --after "), "{}", stderr(&out));

    // Refusals: typed, and nothing listed.
    for (limit, after, want) in [("0", None, "limit must be between"), ("2001", None, "limit must be between"), ("5", Some("not a cursor!"), "not a cursor")] {
        let mut args = vec!["list", "--identity", admin_dir.as_str(), "--limit", limit];
        if let Some(a) = after {
            args.extend(["--after", a]);
        }
        let out = tillit(&args);
        assert!(!out.status.success() && stderr(&out).contains("bad_request") && stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    let out = tillit(&["list", "--identity", &e.admin(), "--after", "x"]);
    assert!(!out.status.success(), "--after needs --limit");

    // Secrets page the same way.
    for i in 0..5 {
        let out = secret_put(&e, &format!("acme/shop/prod/s{i}"), "v", &["acme/shop/prod/orders"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = tillit(&["secret", "list", "--identity", &e.admin(), "--limit", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["secrets"].as_array().unwrap().len(), 2);
    assert!(v["next"].is_string());
    let out = tillit(&["secret", "list", "--identity", &e.admin(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["secrets"].as_array().unwrap().len(), 5);
    drop(nats);
}
