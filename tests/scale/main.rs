//! Scale tests: a binary of their own, so they run after the integration tests rather than
//! alongside them (cargo runs test binaries one after another), on the same harness.

#[path = "../it/harness.rs"]
mod harness;

use harness::*;

/// Past JWT mode's ceiling (its account JWT carries a scoped key per service and passes
/// nats-server's 1 MiB cap at about 1,200 services): 5,000 services of one tenant-environment
/// enroll and each connects with its own permissions, decided by the callout.
/// (`TILLIT_TEST_SERVICES` changes the count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_services_of_one_environment_each_connect_with_their_own_permissions() {
    use futures::stream::{self, StreamExt as _};
    use tillit::client::{ConnectParams, TillitClient};
    use tillit::names::ServiceId;
    let n: usize = std::env::var("TILLIT_TEST_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let e = Estate::init_args("callout-scale.example", &["--auth", "callout"]);
    let nats = e.start_nats();
    let serve = e.start_serve_ready();
    let admin = TillitClient::connect_dir(&tillit::layout::IdentityDir::new(std::path::Path::new(&e.admin())), Some(&nats.url())).await.expect("admin");
    let t0 = std::time::Instant::now();
    let sids: Vec<ServiceId> = (0..n).map(|i| ServiceId::new("acme", "shop", "prod", &format!("svc{i:05}")).unwrap()).collect();
    let clock: tillit::clock::SharedClock = std::sync::Arc::new(tillit::clock::SystemClock);
    let root = e.tmp.path().join("many");
    let enrolled: Vec<Result<ConnectParams, String>> = stream::iter(sids.iter().cloned().enumerate())
        .map(|(i, sid)| {
            let (admin, clock, dir) = (&admin, clock.clone(), root.join(format!("svc{i:05}")));
            async move {
                let req = tillit::proto::TokenCreateRequest { identity: sid.clone(), ttl_secs: 600, count: 1 };
                let token = admin.call::<tillit::proto::TokenCreate>(req).await.map_err(|e| format!("token for {sid}: {e}"))?.tokens.pop().ok_or("no token")?;
                tillit::client::enroll::enroll(&token, &dir, None, clock).await.map_err(|e| format!("enroll {sid}: {e}"))?;
                let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&dir)).map_err(|e| e.to_string())?;
                let mut p = ConnectParams::from_identity(&files, None).map_err(|e| e.to_string())?;
                p.max_reconnects = Some(0);
                Ok(p)
            }
        })
        .buffered(4)
        .collect()
        .await;
    let params: Vec<ConnectParams> = enrolled.into_iter().collect::<Result<_, _>>().unwrap_or_else(|err| panic!("{err}\n{}", serve.log_text()));
    eprintln!("{n} services enrolled in one account in {:?}", t0.elapsed());

    // Each connects and uses its own namespace; every 250th also tries its neighbour's.
    let t1 = std::time::Instant::now();
    let all = &sids;
    let failures: Vec<String> = stream::iter(params.iter().zip(&sids).enumerate())
        .map(|(i, (p, sid))| async move {
            let nc = tillit::client::connect(p).await.map_err(|e| format!("{sid}: {e}"))?;
            let own = format!("{}.ping", sid.subject_prefix());
            if !round_trip(&nc, &own).await {
                return Err(format!("{sid} could not use {own}"));
            }
            if i % 250 == 0 {
                let other = format!("{}.ping", all[(i + 1) % all.len()].subject_prefix());
                if round_trip(&nc, &other).await {
                    return Err(format!("{sid} used {other}"));
                }
            }
            Ok(())
        })
        .buffer_unordered(8)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(failures.is_empty(), "{} of {n} failed, first: {:?}", failures.len(), failures.first());
    eprintln!("{n} services connected with their own permissions in {:?}", t1.elapsed());
    // The account JWT holds no key per service: nats-server's cap is far away.
    let st = admin.status().await.expect("status");
    assert!(st.counts.identities as usize > n, "{:?}", st.counts);
    let stored = e.dir.root().join("nats/resolver");
    let biggest = std::fs::read_dir(&stored).unwrap().filter_map(|f| f.ok()).map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).max().unwrap_or(0);
    eprintln!("largest account JWT at the hub: {biggest} bytes");
    assert!(biggest < 256 * 1024, "{biggest} bytes");
}
