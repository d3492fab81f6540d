//! `tillit bench fanout --agents N --sites S`: time from `secret rotate` until every agent
//! applied the new version and the control plane recorded its signed acknowledgement.
//!
//! Setup (untimed): S sites are registered, N agents enrolled (spread over the sites), each run
//! in this process with its own NATS connection (mutual TLS, its own JWT) and its own durable
//! consumer on the hub, and one secret readable by every site is put and applied once. Then R
//! rotations are timed, one after the other: for each, the clock starts before the rotate
//! request and each agent's latency is when the control plane answered its acknowledgement.

use super::{mint_tokens, run_id, Figures};
use crate::agent::{Agent, AgentOptions, Applied};
use crate::client::{ClientError, TillitClient};
use crate::layout::IdentityDir;
use crate::proto::{SiteAddReply, SiteAddRequest};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a fanout run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Fanout {
    pub agents: usize,
    pub sites: usize,
    pub rounds: usize,
    /// Time until the last agent acknowledged, per round (ms).
    pub all_acked_ms: Vec<f64>,
    /// Per-agent acknowledgement latency over every round.
    pub per_agent: Figures,
    pub serve_rss_bytes: Option<u64>,
    pub setup_secs: f64,
}

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

async fn register_site(admin: &TillitClient, name: &str) -> Result<(), ClientError> {
    let tillit_user = nkeys::KeyPair::new_user();
    let (csr, _key) = crate::issuer::x509::make_csr(&tillit_user.public_key()).map_err(err)?;
    let _: SiteAddReply = admin
        .call::<crate::proto::SiteAdd>(SiteAddRequest {
                name: name.into(),
                listen: "127.0.0.1:1".into(),
                hosts: vec![],
                csr,
                sys_user: nkeys::KeyPair::new_user().public_key(),
                tillit_user: tillit_user.public_key(),
                agent_token_ttl_secs: 600,
            },
        )
        .await?;
    Ok(())
}

async fn rotate(admin: &TillitClient, path: &str, jwks: &str, i: usize) -> Result<(), ClientError> {
    let sealed = crate::client::secrets::seal_for_control_plane(jwks, format!("value-{i}").as_bytes())?;
    let _: crate::proto::SecretReply = admin
        .call::<crate::proto::SecretRotate>(crate::proto::SecretRotateRequest { path: crate::secrets::SecretPath::parse(path).map_err(err)?, value: Some(sealed), generate: None },
        )
        .await?;
    Ok(())
}

/// Wait until every agent of `floor` acknowledged a sequence above its floor; how long after
/// `start` each did.
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Applied>,
    floor: &HashMap<String, u64>,
    start: Instant,
    within: Duration,
) -> Result<Vec<Duration>, ClientError> {
    let mut done: HashMap<String, Duration> = HashMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while done.len() < floor.len() {
        let a = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| err(format!("only {} of {} agents acknowledged within {within:?}", done.len(), floor.len())))?
            .ok_or_else(|| err("agents stopped"))?;
        if floor.get(&a.consumer).is_some_and(|f| a.last_seq > *f) {
            done.entry(a.consumer).or_insert(a.at.saturating_duration_since(start));
        }
    }
    Ok(done.into_values().collect())
}

pub(crate) async fn fanout(admin_dir: &Path, agents: usize, sites: usize, rounds: usize, nats: Option<&str>, scratch: &Path) -> Result<Fanout, ClientError> {
    let setup = Instant::now();
    let admin = TillitClient::connect_dir(&IdentityDir::new(admin_dir), nats).await?;
    let run = run_id();
    let site_names: Vec<String> = (0..sites).map(|i| format!("{run}-s{i}")).collect();
    for s in &site_names {
        register_site(&admin, s).await?;
    }
    eprintln!("registered {sites} sites; enrolling {agents} agents…");
    let mut tokens = Vec::new();
    for (i, s) in site_names.iter().enumerate() {
        let share = agents / sites + usize::from(i < agents % sites);
        let sid = crate::names::agent_service_id(s).map_err(err)?;
        for t in mint_tokens(&admin, &sid, share).await? {
            tokens.push((s.clone(), t));
        }
    }
    let dirs: Vec<std::path::PathBuf> = (0..tokens.len()).map(|i| scratch.join(format!("agent-{i}"))).collect();
    let tokens = Arc::new(tokens);
    let dirs_c = Arc::new(dirs.clone());
    let nats_owned = nats.map(str::to_string);
    let (_, _, errors) = super::drive(tokens.len(), 16, move |_, i| {
        let (tokens, dirs, nats) = (tokens.clone(), dirs_c.clone(), nats_owned.clone());
        async move {
            let t = Instant::now();
            crate::client::enroll::enroll(&tokens[i].1, &dirs[i], nats.as_deref(), Arc::new(crate::clock::SystemClock)).await.map_err(|e| e.to_string())?;
            Ok(t.elapsed())
        }
    })
    .await;
    if errors > 0 {
        return Err(err(format!("{errors} agents failed to enroll")));
    }
    eprintln!("starting {agents} agents (one connection and one durable consumer each)…");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    let mut consumers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let agent = Agent::start(AgentOptions {
            identity: dir.clone(),
            files: scratch.join(format!("files-{i}")),
            exec: None,
            nats: nats.map(str::to_string),
            batch: 64,
            notify: Some(tx.clone()),
        })
        .await
        .map_err(err)?;
        consumers.push(crate::subjects::agent_consumer(agent.site(), &crate::identity::load(&IdentityDir::new(dir)).map_err(err)?.info.user_public_key));
        let mut stop = stop_rx.clone();
        handles.push(tokio::spawn(agent.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    // One secret every site reads; applied once before timing.
    let path = format!("bench/{run}/fanout/secret");
    let jwks = std::fs::read_to_string(IdentityDir::new(admin_dir).trust_jwks()).map_err(err)?;
    let sealed = crate::client::secrets::seal_for_control_plane(&jwks, b"value-0")?;
    let start = Instant::now();
    let _: crate::proto::SecretReply = admin
        .call::<crate::proto::SecretPut>(crate::proto::SecretPutRequest {
                path: crate::secrets::SecretPath::parse(&path).map_err(err)?,
                readers: site_names.iter().map(|s| format!("site:{s}")).collect(),
                value: sealed,
            },
        )
        .await?;
    let none_yet: HashMap<String, u64> = consumers.iter().map(|c| (c.clone(), 0)).collect();
    collect(&mut rx, &none_yet, start, Duration::from_secs(120)).await?;
    let setup_secs = setup.elapsed().as_secs_f64();
    // The agents' used join tokens are revoked a few seconds after their enrollments (a reply
    // grace, then one BOOTSTRAP push that makes nats-server re-check every bootstrap
    // connection): let that land before the clock starts.
    eprintln!("setup done in {setup_secs:.1}s; letting the bootstrap revocations land…");
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("timing {rounds} rotations…");
    let mut all_acked_ms = Vec::new();
    let mut lat = Vec::new();
    let mut total = Duration::ZERO;
    for r in 1..=rounds {
        // What each agent must reach: the stream's last sequence after the rotation. Agents of
        // a site see only their site's event, so ask for "newer than what it applied".
        let mut last: HashMap<String, u64> = HashMap::new();
        while let Ok(a) = rx.try_recv() {
            let e = last.entry(a.consumer).or_default();
            *e = (*e).max(a.last_seq);
        }
        let floor: HashMap<String, u64> = consumers.iter().map(|c| (c.clone(), last.get(c).copied().unwrap_or(0))).collect();
        let start = Instant::now();
        rotate(&admin, &path, &jwks, r).await?;
        let done = collect(&mut rx, &floor, start, Duration::from_secs(60)).await.map_err(|e| err(format!("round {r}: {e}")))?;
        let round_max = done.iter().max().copied().unwrap_or_default();
        total += round_max;
        all_acked_ms.push(round_max.as_secs_f64() * 1000.0);
        lat.extend(done);
        eprintln!("round {r}: all {agents} agents acknowledged in {:.1} ms", round_max.as_secs_f64() * 1000.0);
    }
    let status = admin.status().await?;
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    Ok(Fanout {
        agents,
        sites,
        rounds,
        all_acked_ms,
        per_agent: Figures::from("agent ack after secret rotate", agents, total, lat, 0),
        serve_rss_bytes: status.rss_bytes,
        setup_secs,
    })
}
