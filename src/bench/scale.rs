//! `tillit bench scale --services 1000,10000,100000`: one estate built in this run on this
//! machine (sled, one `serve`), grown step by step to each count of enrolled services; at each
//! step a row of what an operator feels: `serve`'s RSS, the store on disk, the cold start to
//! ready, `status`, the paged `list`, OCSP answers, the CRL with 10% of the services revoked,
//! the renewal rate while the estate holds that many, and what each added service costs.
//!
//! Services are enrolled the way services do (a join token each, a bootstrap connection, a
//! signed enrollment with their own keys), 16 in flight. In callout mode they share one account
//! (one tenant-environment, a project per thousand); in JWT mode an account holds 1,000 (a
//! tenant per thousand), under JWT mode's per-account ceiling.

use super::stores::{start, Kind, Stack};
use super::{drive, Figures};
use crate::client::enroll::{bootstrap_params, LocalKeys};
use crate::client::{connect, TillitClient};
use crate::estate::callout::AuthMode;
use crate::layout::IdentityDir;
use crate::names::ServiceId;
use crate::proto;
use crate::token::JoinToken;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Services per account in JWT mode (under [`crate::estate::MAX_SERVICES_PER_ACCOUNT`] and the
/// 1 MiB account JWT cap).
const JWT_PER_ACCOUNT: usize = 1000;

/// One row of the table: the estate at `services`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    pub services: usize,
    /// Enrollments per second while the estate grew to this step.
    pub build_per_sec: f64,
    /// `serve`'s RSS once the step was built (it enrolled every service of the run).
    pub rss_built: u64,
    /// `serve`'s RSS just after a restart (ready).
    pub rss_ready: u64,
    /// `serve`'s RSS after a restart and this row's measurements (status, list, OCSP, CRL, renewals).
    pub rss_restarted: u64,
    /// The sled store directory.
    pub store_bytes: u64,
    /// nats-server's JetStream directory (the OCSP answers, caller keys and site streams).
    pub jetstream_bytes: u64,
    /// Start of `serve` to `/readyz` answering 200.
    pub ready_secs: f64,
    /// `status`: median and slowest of 5.
    pub status_ms: f64,
    pub status_max_ms: f64,
    /// One page of 500 identities (`list --limit 500 --after …`), median of the pages walked.
    pub list_page_ms: f64,
    /// Every identity, 2,000 a page, as `tillit list` follows the pages.
    pub list_all_secs: f64,
    pub list_pages: usize,
    /// OCSP GET answers over HTTP keep-alive, 8 in flight, on serials of the estate (10% revoked).
    pub ocsp: Figures,
    pub revoked: usize,
    pub crl_bytes: usize,
    /// The first fetch after the revocations: built.
    pub crl_ms: f64,
    /// The next fetch: kept (nothing that revokes changed).
    pub crl_kept_ms: f64,
    /// Renewals while the estate holds `services`.
    pub renew: Figures,
    /// RSS and store bytes per service added since the previous row (or since the empty estate).
    pub rss_per_service: f64,
    pub store_per_service: f64,
}

/// Size of a directory tree in bytes (files' lengths).
fn du(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn sid_of(mode: AuthMode, i: usize) -> Result<ServiceId, String> {
    let k = i / 1000;
    let (tenant, project) = match mode {
        AuthMode::Callout => ("scale".to_string(), format!("p{k}")),
        AuthMode::Jwt => (format!("t{}", i / JWT_PER_ACCOUNT), "p".to_string()),
    };
    ServiceId::new(&tenant, &project, "prod", &format!("s{i}")).map_err(|e| e.to_string())
}

/// Enroll one service as a service does; its certificate's serial.
async fn add_service(admin: &TillitClient, sid: ServiceId, td: &str) -> Result<String, String> {
    let r: proto::TokenCreateReply = admin
        .call::<proto::TokenCreate>(proto::TokenCreateRequest { identity: sid.clone(), ttl_secs: 600, count: 1 })
        .await
        .map_err(|e| format!("token for {sid}: {e}"))?;
    let t = r.tokens.into_iter().next().ok_or("no token minted")?;
    let token = JoinToken::decode(&t).map_err(|e| e.to_string())?;
    let keys = LocalKeys::generate().map_err(|e| e.to_string())?;
    let nc = connect(&bootstrap_params(&token, token.nats_urls.clone()).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
    Ok(super::send_enroll(&nc, &token, &keys, td).await.map_err(|e| format!("enroll {sid}: {e}"))?.cert_serial)
}

/// The certificates' serials of the estate (a tenth of them revoked).
type Serials = Arc<Mutex<Vec<String>>>;

/// Grow the estate from `from` to `to` services; every tenth new one is revoked afterwards.
/// Enrollments per second.
async fn grow(admin: &Arc<TillitClient>, mode: AuthMode, from: usize, to: usize, serials: &Serials) -> Result<f64, String> {
    let td = admin.identity().info.trust_domain.clone();
    eprintln!("enrolling services {from}..{to}, 16 in flight…");
    let (a, s) = (admin.clone(), serials.clone());
    // Progress every tenth of the step (at least every 1,000).
    let (done, began, every) = (Arc::new(std::sync::atomic::AtomicUsize::new(0)), Instant::now(), ((to - from) / 10).max(1000));
    let (took, lat, errors) = drive(to - from, 16, move |_, k| {
        let (a, s, td, done) = (a.clone(), s.clone(), td.clone(), done.clone());
        async move {
            let start = Instant::now();
            let sid = sid_of(mode, from + k)?;
            let serial = add_service(&a, sid, &td).await?;
            if let Ok(mut v) = s.lock() {
                v.push(serial);
            }
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % every == 0 {
                eprintln!("  {} of {} enrolled ({:.0}/s so far)", from + n, to, n as f64 / began.elapsed().as_secs_f64().max(1e-9));
            }
            Ok(start.elapsed())
        }
    })
    .await;
    if errors > 0 {
        return Err(format!("{errors} of {} enrollments failed (the first is logged above)", to - from));
    }
    let rate = lat.len() as f64 / took.as_secs_f64().max(1e-9);
    eprintln!("  {} enrolled in {:.1} s ({rate:.0}/s); revoking every tenth…", lat.len(), took.as_secs_f64());
    let a = admin.clone();
    let victims: Vec<usize> = (from..to).filter(|i| i % 10 == 0).collect();
    let victims = Arc::new(victims);
    let v = victims.clone();
    let (_, _, errors) = drive(victims.len(), 8, move |_, k| {
        let (a, v) = (a.clone(), v.clone());
        async move {
            let start = Instant::now();
            let sid = sid_of(mode, v[k])?;
            let _: proto::RevokeReply = a
                .call::<proto::Revoke>(proto::RevokeRequest { service: sid, reason: Some("bench scale".into()) })
                .await
                .map_err(|e| e.to_string())?;
            Ok(start.elapsed())
        }
    })
    .await;
    if errors > 0 {
        return Err(format!("{errors} revocations failed"));
    }
    Ok(rate)
}

/// `n` OCSP GET requests at 8 in flight on keep-alive connections, over `serials`.
async fn ocsp(port: u16, ca_pem: &str, serials: &[String], n: usize) -> Result<Figures, String> {
    let paths: Vec<String> = serials
        .iter()
        .step_by((serials.len() / n.max(1)).max(1))
        .take(n)
        .map(|s| {
            let der = crate::ocsp::request_to(ca_pem, s).ok_or("cannot build an OCSP request")?;
            let b64 = data_encoding::BASE64.encode(&der).replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
            Ok(format!("/ocsp/{b64}"))
        })
        .collect::<Result<_, String>>()?;
    let paths = Arc::new(paths);
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(Arc::new(tokio::sync::Mutex::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?)));
    }
    let conns = Arc::new(conns);
    let count = paths.len();
    let (total, lat, errors) = drive(count, 8, move |w, i| {
        let (conns, paths) = (conns.clone(), paths.clone());
        async move {
            let mut s = conns[w].lock().await;
            let start = Instant::now();
            let (status, body) = super::http_request(&mut *s, port, "GET", &paths[i], &[], None).await?;
            if status != 200 || body.is_empty() {
                return Err(format!("OCSP answered {status}"));
            }
            Ok(start.elapsed())
        }
    })
    .await;
    Ok(Figures::from("OCSP GET answer", 8, total, lat, errors))
}

/// `GET /crl`: (bytes, ms until the last byte).
async fn crl(port: u16) -> Result<(usize, f64), String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let (status, der) = super::http_request_bytes(&mut s, port, "GET", "/crl", &[], None).await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        return Err(format!("/crl answered {status}"));
    }
    Ok((der.len(), ms))
}

async fn timed<T, F: std::future::Future<Output = Result<T, crate::client::ClientError>>>(f: F) -> Result<(T, Duration), String> {
    let start = Instant::now();
    let v = f.await.map_err(|e| e.to_string())?;
    Ok((v, start.elapsed()))
}

/// Walk `list` by pages of `limit`: (pages' times, identities seen).
async fn list_all(admin: &TillitClient, limit: u32) -> Result<(Vec<Duration>, usize), String> {
    let (mut after, mut times, mut seen) = (None, Vec::new(), 0);
    loop {
        let (page, took) = timed(admin.call::<proto::List>(proto::ListRequest { limit: Some(limit), after: after.take() })).await?;
        times.push(took);
        seen += page.identities.len();
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok((times, seen)),
        }
    }
}

/// The median of `xs`, in ms.
fn median_ms(xs: &[Duration]) -> f64 {
    super::median(xs.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
}

/// Build the estate through `steps` (ascending service counts) and measure each.
pub(crate) async fn run(mode: AuthMode, steps: &[usize], root: &Path) -> Result<Vec<Row>, String> {
    eprintln!("== scale, {} mode: starting the stack…", mode.as_str());
    let r = root.to_path_buf();
    let mut stack: Stack = tokio::task::spawn_blocking(move || start(Kind::Sled, &r, mode)).await.map_err(|e| e.to_string())??;
    let died = stack.nats_died();
    tokio::select! {
        rows = steps_on(&mut stack, mode, steps) => rows,
        why = died => Err(why),
    }
}

/// Grow the estate on `stack` through `steps` and measure each.
async fn steps_on(stack: &mut Stack, mode: AuthMode, steps: &[usize]) -> Result<Vec<Row>, String> {
    let admin_dir = stack.dir.admin().root().to_path_buf();
    let mut admin = Arc::new(TillitClient::connect_dir(&IdentityDir::new(&admin_dir), None).await.map_err(|e| e.to_string())?);
    let ca_pem = std::fs::read_to_string(IdentityDir::new(&admin_dir).ca()).map_err(|e| e.to_string())?;
    let serials: Serials = Arc::new(Mutex::new(Vec::new()));
    let base = admin.status().await.map_err(|e| e.to_string())?;
    let (mut prev_n, mut prev_rss, mut prev_store) = (0usize, base.rss_bytes.unwrap_or(0), du(&stack.dir.store()));
    eprintln!("fresh estate: serve RSS {:.1} MiB, store {:.1} MiB", prev_rss as f64 / 1048576.0, prev_store as f64 / 1048576.0);
    let mut rows = Vec::new();
    for &n in steps {
        let build_per_sec = grow(&admin, mode, prev_n, n, &serials).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_built = admin.status().await.map_err(|e| e.to_string())?.rss_bytes.unwrap_or(0);
        let store_bytes = du(&stack.dir.store());
        let jetstream_bytes = du(&stack.dir.jetstream());
        eprintln!("restarting serve (cold start)…");
        let ready = tokio::task::block_in_place(|| stack.restart_serve())?;
        admin = Arc::new(TillitClient::connect_dir(&IdentityDir::new(&admin_dir), None).await.map_err(|e| e.to_string())?);
        let mut status_times = Vec::new();
        let (mut revoked_count, mut rss_ready) = (0usize, 0);
        for k in 0..5 {
            let (st, took) = timed(admin.status()).await?;
            status_times.push(took);
            revoked_count = st.counts.revoked;
            if k == 0 {
                rss_ready = st.rss_bytes.unwrap_or(0);
            }
        }
        let status_max = status_times.iter().max().copied().unwrap_or_default();
        eprintln!("listing {n} services by pages…");
        let (page_times, _) = list_all(&admin, 500).await?;
        let (all_times, seen) = list_all(&admin, crate::proto::MAX_PAGE).await?;
        if seen < n {
            return Err(format!("list walked {seen} identities, fewer than the {n} enrolled"));
        }
        let sample: Vec<String> = serials.lock().map(|v| v.clone()).unwrap_or_default();
        eprintln!("OCSP and CRL…");
        let ocsp = ocsp(stack.http_port(), &ca_pem, &sample, 4000).await?;
        let (crl_bytes, crl_ms) = crl(stack.http_port()).await?;
        let (_, crl_kept_ms) = crl(stack.http_port()).await?;
        eprintln!("renewals while the estate holds {n}…");
        let scratch = stack.dir.root().join("scratch").join(format!("renew-{n}"));
        let renew = super::renew(&admin_dir, 2000, 8, None, &scratch).await.map_err(|e| e.to_string())?;
        let rss_restarted = admin.status().await.map_err(|e| e.to_string())?.rss_bytes.unwrap_or(0);
        let added = (n - prev_n).max(1) as f64;
        let row = Row {
            services: n,
            build_per_sec,
            rss_built,
            rss_ready,
            rss_restarted,
            store_bytes,
            jetstream_bytes,
            ready_secs: ready.as_secs_f64(),
            status_ms: median_ms(&status_times),
            status_max_ms: status_max.as_secs_f64() * 1000.0,
            list_page_ms: median_ms(&page_times),
            list_all_secs: all_times.iter().sum::<Duration>().as_secs_f64(),
            list_pages: all_times.len(),
            ocsp,
            revoked: revoked_count,
            crl_bytes,
            crl_ms,
            crl_kept_ms,
            renew,
            rss_per_service: (rss_built as f64 - prev_rss as f64) / added,
            store_per_service: (store_bytes as f64 - prev_store as f64) / added,
        };
        eprintln!("{}", line(&row));
        (prev_n, prev_rss, prev_store) = (n, rss_built, store_bytes);
        rows.push(row);
    }
    Ok(rows)
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// The table's header.
pub(crate) fn header() -> String {
    format!(
        "{:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9} {:>9} {:>10} {:>10} {:>14} {:>9} {:>9} {:>11} {:>11}",
        "services", "build/s", "RSS built", "RSS ready", "RSS after", "store", "ready", "status", "list page", "list all", "OCSP p50", "OCSP p99", "CRL (revoked)", "CRL built", "CRL kept", "renew/s", "per service"
    )
}

/// One row, aligned under [`header`].
pub(crate) fn line(r: &Row) -> String {
    format!(
        "{:>8} {:>8.0} {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB {:>6.2} s {:>4.0} ms {:>6.1} ms {:>7.2} s {:>7.3} ms {:>7.3} ms {:>7} KiB ({}) {:>6.1} ms {:>6.1} ms {:>11.0} {:>5.0} B RSS, {:.0} B disk",
        r.services,
        r.build_per_sec,
        mib(r.rss_built),
        mib(r.rss_ready),
        mib(r.rss_restarted),
        mib(r.store_bytes),
        r.ready_secs,
        r.status_ms,
        r.list_page_ms,
        r.list_all_secs,
        r.ocsp.p50_ms,
        r.ocsp.p99_ms,
        r.crl_bytes / 1024,
        r.revoked,
        r.crl_ms,
        r.crl_kept_ms,
        r.renew.per_sec,
        r.rss_per_service,
        r.store_per_service,
    )
}
