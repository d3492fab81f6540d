//! `tillit bench connect`: new authenticated connections per second, and the time each takes
//! (TLS with the client certificate, OCSP, CONNECT, the first PING answered), against two stacks
//! built in this run on this machine: one in JWT mode and one in auth callout mode.

use super::stores::{start, Kind};
use super::{drive, mint_tokens, Figures};
use crate::client::{ConnectParams, TillitClient};
use crate::estate::callout::AuthMode;
use crate::layout::IdentityDir;
use crate::names::ServiceId;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Build a stack in `mode`, enroll `services` services (untimed), then open `n` connections at
/// `c` in flight, round-robin over the services; each is closed once its first PING came back.
pub(crate) async fn measure(mode: AuthMode, n: usize, c: usize, services: usize, root: &Path) -> Result<(Figures, Option<crate::proto::status::AuthStatus>), String> {
    eprintln!("== {} mode: starting the stack…", mode.as_str());
    let r = root.to_path_buf();
    let stack = tokio::task::spawn_blocking(move || start(Kind::Sled, &r, mode)).await.map_err(|e| e.to_string())??;
    let admin_dir = stack.dir.admin().root().to_path_buf();
    let admin = TillitClient::connect_dir(&IdentityDir::new(&admin_dir), None).await.map_err(|e| e.to_string())?;
    let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
    eprintln!("enrolling {services} services (untimed)…");
    let mut params = Vec::with_capacity(services);
    let mut sids = Vec::with_capacity(services);
    let (started, mut lap) = (Instant::now(), Instant::now());
    for i in 0..services {
        let sid = ServiceId::new("bench", "bench", "connect", &format!("svc{i}")).map_err(|e| e.to_string())?;
        sids.push(sid.clone());
        let token = mint_tokens(&admin, &sid, 1).await.map_err(|e| e.to_string())?.pop().ok_or("no token minted")?;
        let dir = stack.dir.root().join("scratch").join(format!("svc{i}"));
        crate::client::enroll::enroll(&token, &dir, None, clock.clone()).await.map_err(|e| e.to_string())?;
        let files = crate::identity::load(&IdentityDir::new(&dir)).map_err(|e| e.to_string())?;
        let mut p = ConnectParams::from_identity(&files, None).map_err(|e| e.to_string())?;
        p.max_reconnects = Some(0);
        params.push(p);
        if (i + 1) % 500 == 0 {
            eprintln!("  enrolled {}/{services} in {:.1?} (the last 500 at {:.0}/s)", i + 1, started.elapsed(), 500.0 / lap.elapsed().as_secs_f64());
            lap = Instant::now();
        }
    }
    // Warm up, untimed: every service connects once and uses a subject of its own namespace
    // (admitted, with its own permissions).
    eprintln!("each of the {services} services connects and uses its own subjects (untimed)…");
    for (p, sid) in params.iter().zip(&sids) {
        let nc = crate::client::connect(p).await.map_err(|e| e.to_string())?;
        let subject = format!("{}.ping", sid.subject_prefix());
        let mut sub = nc.subscribe(subject.clone()).await.map_err(|e| e.to_string())?;
        nc.publish(subject.clone(), "ping".into()).await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub)).await {
            Ok(Some(_)) => {}
            _ => return Err(format!("{sid} did not get its own message on {subject}: not admitted with its permissions")),
        }
    }
    eprintln!("all {services} services connected with their own permissions");
    eprintln!("timing {n} connections at concurrency {c}…");
    let params = Arc::new(params);
    let (total, lat, errors) = drive(n, c, move |_, i| {
        let params = params.clone();
        async move {
            let p = &params[i % params.len()];
            let start = Instant::now();
            let nc = crate::client::connect(p).await.map_err(|e| e.to_string())?;
            nc.flush().await.map_err(|e| e.to_string())?;
            let took = start.elapsed();
            drop(nc);
            Ok(took)
        }
    })
    .await;
    // tillit's own part: the decision time the replica measured (callout mode).
    let decisions = match admin.status().await {
        Ok(st) => st.auth.filter(|a| a.requests > 0),
        Err(e) => {
            tracing::warn!("status: {e}");
            None
        }
    };
    // Let the server see the last closes before the stack goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stack);
    Ok((Figures::from(&format!("connect ({} mode)", mode.as_str()), c, total, lat, errors), decisions))
}
