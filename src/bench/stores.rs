//! `tillit bench stores`: the same enroll, renew and secret-get runs against three stacks built
//! in this run on this machine: sled (one `serve`), JetStream R1 (one server, one `serve`) and
//! JetStream R3 (a three-node hub, two `serve` replicas); then the failover gap: the longest
//! stretch with no successful change while the leader replica is killed (`kill -9`).

use super::{enroll, renew, secret_get, Figures};
use crate::client::TillitClient;
use crate::init::{init, InitOptions};
use crate::layout::{DataDir, IdentityDir};
use crate::names::ServiceId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One stack under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sled,
    JetStreamR1,
    JetStreamR3,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Sled => "sled",
            Kind::JetStreamR1 => "jetstream R1",
            Kind::JetStreamR3 => "jetstream R3",
        }
    }
}

/// Processes killed when dropped.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running stack: its data dir, processes, and the replicas' HTTP ports.
pub(crate) struct Stack {
    pub(crate) dir: DataDir,
    procs: Procs,
    http: Vec<u16>,
}

pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `n` consecutive free ports.
fn free_ports(n: u16) -> Result<u16, String> {
    for _ in 0..200 {
        let p = free_port()?;
        if p < 60_000 && (1..n).all(|k| std::net::TcpListener::bind(("127.0.0.1", p + k)).is_ok()) {
            return Ok(p);
        }
    }
    Err("no run of free ports".into())
}

fn spawn(what: &str, cmd: &mut Command, log: &Path) -> Result<(String, Child), String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = f.try_clone().map_err(|e| e.to_string())?;
    let child = cmd.stdout(Stdio::from(f)).stderr(Stdio::from(err)).spawn().map_err(|e| format!("start {what}: {e}"))?;
    Ok((what.to_string(), child))
}

/// Whether one of `watched` (nats-servers: pid, log) has exited, with the end of its log (the
/// Go runtime's fatal error, if any). Children are reaped only when the stack drops, so an
/// exited one is a zombie.
fn dead_nats(watched: &[(u32, PathBuf)]) -> Option<String> {
    for (pid, log) in watched {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: String = text.lines().filter(|l| !l.starts_with('\t')).collect::<Vec<_>>().join("\n");
            let start = lines.find("fatal error").or_else(|| lines.find("panic")).unwrap_or(lines.len().saturating_sub(2000));
            let end = (start + 2000).min(lines.len());
            return Some(format!("nats-server (pid {pid}) exited during the bench; its log ({}) says:\n{}", log.display(), lines.get(start..end).unwrap_or("")));
        }
    }
    None
}

/// Poll `/readyz` every `poll` until it answers 200 (or a nats-server of `watched` exited).
fn wait_ready(port: u16, within: Duration, poll: Duration, watched: &[(u32, PathBuf)]) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(why) = dead_nats(watched) {
            return Err(why);
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(poll);
    }
    Err(format!("the control plane on :{port} was not ready within {within:?}"))
}

pub(crate) fn start(kind: Kind, root: &Path, auth: crate::estate::callout::AuthMode) -> Result<Stack, String> {
    let bin = crate::natsbin::locate()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let nats = free_ports(3)?;
    let (http, http2) = (free_port()?, free_port()?);
    let data = root.join(format!("{}-{}", kind.name().replace(' ', "-"), auth.as_str()));
    let jetstream = kind != Kind::Sled;
    let opts = InitOptions {
        data_dir: data.clone(),
        trust_domain: "bench.example".into(),
        nats_url: format!("nats://127.0.0.1:{nats}"),
        http_addr: Some(format!("127.0.0.1:{http}")),
        http_public_url: None,
        metrics_addr: None,
        monitor_addr: None,
        leaf_port: None,
        store: if jetstream { "jetstream" } else { "sled" }.into(),
        store_replicas: if kind == Kind::JetStreamR3 { 3 } else { 1 },
        replica_urls: if kind == Kind::JetStreamR3 { vec![format!("http://127.0.0.1:{http2}")] } else { vec![] },
        cluster: (kind == Kind::JetStreamR3).then(|| free_ports(3).map(|p| (3, p))).transpose()?,
        ocsp_local_url: None,
        ocsp_when_unreachable: None,
        force: false,
        adopt: None,
        auth,
    };
    init(&opts, Arc::new(crate::clock::SystemClock)).map_err(|e| e.to_string())?;
    let dir = DataDir::new(&data);
    let mut procs = Procs(vec![]);
    let confs: Vec<PathBuf> = match kind {
        Kind::JetStreamR3 => (1..=3).map(|n| dir.node_conf(n)).collect(),
        _ => vec![dir.server_conf()],
    };
    for (i, conf) in confs.iter().enumerate() {
        procs.0.push(spawn("nats-server", Command::new(&bin).arg("-c").arg(conf), &data.join(format!("nats-{i}.log")))?);
    }
    std::thread::sleep(Duration::from_millis(500));
    procs.0.push(serve_proc(&me, &data, http, &data.join("serve-1.log"))?);
    wait_ready(http, Duration::from_secs(60), Duration::from_millis(100), &[])?;
    let mut ports = vec![http];
    if kind == Kind::JetStreamR3 {
        let second = root.join("jetstream-R3-replica-2");
        crate::cli::store::make_replica_dir(&dir, &second).map_err(|e| e.to_string())?;
        procs.0.push(serve_proc(&me, &second, http2, &data.join("serve-2.log"))?);
        wait_ready(http2, Duration::from_secs(60), Duration::from_millis(100), &[])?;
        ports.push(http2);
    }
    Ok(Stack { dir, procs, http: ports })
}

fn serve_proc(me: &Path, data: &Path, port: u16, log: &Path) -> Result<(String, Child), String> {
    spawn(
        "tillit serve",
        Command::new(me).args(["serve", "--data-dir"]).arg(data).args(["--http-addr", &format!("127.0.0.1:{port}")]).env("RUST_LOG", "warn"),
        log,
    )
}

impl Stack {
    /// The stack's nats-servers: pid and log.
    fn nats_procs(&self) -> Vec<(u32, PathBuf)> {
        self.procs.0.iter().enumerate().filter(|(_, (what, _))| what == "nats-server").map(|(i, (_, c))| (c.id(), self.dir.root().join(format!("nats-{i}.log")))).collect()
    }

    /// Resolves, with what died and the end of its log, once one of the stack's nats-servers has
    /// exited: a bench then stops with that instead of waiting on requests nobody can carry.
    pub(crate) fn nats_died(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let watched = self.nats_procs();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(why) = dead_nats(&watched) {
                    return why;
                }
            }
        }
    }

    /// The first replica's HTTP port (`/ocsp`, `/crl`, `/readyz`).
    pub(crate) fn http_port(&self) -> u16 {
        self.http[0]
    }

    /// Stop the first replica (SIGTERM, then SIGKILL after 10 s), start it again, and return
    /// the time from its start to `/readyz` answering 200: the cold start.
    pub(crate) fn restart_serve(&mut self) -> Result<Duration, String> {
        let i = self.procs.0.iter().position(|(w, _)| w == "tillit serve").ok_or("no serve process")?;
        let child = &mut self.procs.0[i].1;
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let log = self.dir.root().join("serve-1.log");
        let started = Instant::now();
        self.procs.0[i] = serve_proc(&me, self.dir.root(), self.http[0], &log)?;
        wait_ready(self.http[0], Duration::from_secs(120), Duration::from_millis(5), &self.nats_procs())?;
        Ok(started.elapsed())
    }
}

/// What one stack measured.
pub(crate) struct Measured {
    pub(crate) kind: Kind,
    pub(crate) enroll: Figures,
    pub(crate) renew: Figures,
    pub(crate) secret_get: Figures,
    /// With replicas: the longest stretch without a successful change while the leader died.
    pub(crate) failover_gap: Option<Duration>,
}

/// Run the three benchmarks (and, with replicas, the failover) against one stack.
pub(crate) async fn measure(kind: Kind, n: usize, c: usize, root: &Path) -> Result<Measured, String> {
    eprintln!("== {}: starting the stack…", kind.name());
    let r = root.to_path_buf();
    let mut stack = tokio::task::spawn_blocking(move || start(kind, &r, crate::estate::callout::AuthMode::Jwt)).await.map_err(|e| e.to_string())??;
    let admin = stack.dir.admin().root().to_path_buf();
    let scratch = stack.dir.root().join("scratch");
    let enroll = enroll(&admin, n, c, None).await.map_err(|e| e.to_string())?;
    let renew = renew(&admin, n, c.min(n), None, &scratch.join("renew")).await.map_err(|e| e.to_string())?;
    let secret_get = secret_get(&admin, n, c, None, &scratch.join("secret")).await.map_err(|e| e.to_string())?;
    let failover_gap = match stack.http.len() > 1 {
        true => Some(failover(&mut stack, &admin).await?),
        false => None,
    };
    Ok(Measured { kind, enroll, renew, secret_get, failover_gap })
}

/// Changes (join tokens minted) at 4 in flight for 10 s; the leader replica is killed after 2 s.
/// The longest stretch between two successful changes.
async fn failover(stack: &mut Stack, admin: &Path) -> Result<Duration, String> {
    let client = Arc::new(TillitClient::connect_dir(&IdentityDir::new(admin), None).await.map_err(|e| e.to_string())?);
    let status = client.call::<crate::proto::Status>(crate::proto::StatusRequest {}).await.map_err(|e| e.to_string())?;
    let store = status.store.ok_or("no store in status")?;
    let leader = store.leader.ok_or("no leader")?.replica;
    let port = store.replicas.iter().find(|r| r.id == leader).and_then(|r| r.http_addr.rsplit(':').next()?.parse::<u16>().ok()).ok_or("leader's port")?;
    let idx = stack.http.iter().position(|p| *p == port).ok_or("leader not ours")?;
    let sid = ServiceId::new("bench", "bench", "failover", "svc").map_err(|e| e.to_string())?;
    let successes = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, sid, successes) = (client.clone(), sid.clone(), successes.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = client
                    .call::<crate::proto::TokenCreate>(crate::proto::TokenCreateRequest { identity: sid.clone(), ttl_secs: 600, count: 1 })
                    .await;
                if r.is_ok() {
                    if let Ok(mut s) = successes.lock() {
                        s.push(Instant::now());
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The serve processes follow the nats-servers in the list.
    let serves: Vec<usize> = stack.procs.0.iter().enumerate().filter(|(_, (w, _))| w == "tillit serve").map(|(i, _)| i).collect();
    let victim = serves.get(idx).copied().ok_or("leader process")?;
    let _ = stack.procs.0[victim].1.kill();
    let killed = Instant::now();
    eprintln!("killed the leader replica {leader} at {:?}", killed - t0);
    for w in workers {
        let _ = w.await;
    }
    let mut times = successes.lock().map_err(|_| "lock")?.clone();
    times.sort();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let after = times.iter().filter(|t| **t > killed).count();
    if after == 0 {
        return Err("no change succeeded after the leader was killed".into());
    }
    Ok(gap)
}
