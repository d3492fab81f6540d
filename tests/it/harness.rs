//! The one harness every integration test uses: real nats-server processes on free loopback
//! ports, real `tillit` binaries, data dirs in temp dirs. Nothing here mocks a part.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tillit::layout::DataDir;

/// The `tillit` binary under test.
pub fn tillit_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tillit")
}

/// Run `tillit ARGS` to completion.
pub fn tillit(args: &[&str]) -> Output {
    tillit_env(args, &[])
}

/// Run `tillit ARGS` with extra environment.
pub fn tillit_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(tillit_bin());
    c.args(args).env_remove("TILLIT_MASTER_KEY").env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run tillit")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port nobody listens on (allocated from a per-process range, then probed).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Below the kernel's ephemeral range: a port handed out there can be taken, between the
    // check here and the process binding it, as the local port of any outgoing connection
    // (a test's serve once found its HTTP port so taken while its hub formed a cluster).
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .clamp(21_000, 60_000)
        - 1;
    if NEXT.load(Ordering::SeqCst) == 0 {
        let base = 20_000 + (std::process::id() % 400) as u16 * 5;
        let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    }
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        if p > top {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// `n` consecutive free loopback ports; the first one.
pub fn free_ports(n: u16) -> u16 {
    'again: loop {
        let first = free_port();
        for k in 1..n {
            if free_port() != first + k {
                continue 'again;
            }
        }
        return first;
    }
}

/// The pinned nats-server binary.
pub fn nats_server_bin() -> PathBuf {
    tillit::natsbin::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// A running nats-server, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub conf: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl NatsServer {
    /// Start nats-server with `conf` (which listens on `port`) and wait until it accepts.
    pub fn start(conf: &Path, port: u16) -> Self {
        Self::start_args(conf, port, &[])
    }

    pub fn start_args(conf: &Path, port: u16, extra: &[&str]) -> Self {
        let log = conf.with_file_name(format!("nats-server-{port}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(conf)
            .args(extra)
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("start nats-server");
        let mut s = NatsServer { child: Some(child), conf: conf.to_path_buf(), port, log };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("nats-server exited ({st}) at start:\n{}", self.log_text());
                }
            }
            if self.log_text().contains("Server is ready") && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("nats-server not ready on {} after 15s:\n{}", self.port, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kill it now.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `tillit serve`, SIGKILLed on drop if still running.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
}

impl Serve {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_args(data_dir, &[])
    }

    /// `tillit serve --data-dir D` with extra flags.
    pub fn start_args(data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--data-dir", data_dir.to_str().expect("utf-8 path")];
        args.extend(extra);
        Self::command(data_dir, &args)
    }

    /// `tillit <args>` as a long-running process logging into `data_dir`.
    pub fn command(data_dir: &Path, args: &[&str]) -> Self {
        let log = data_dir.join(format!("{}-{}.log", args[0], free_port()));
        let f = std::fs::File::create(&log).expect("log");
        let child = Command::new(tillit_bin())
            .args(args)
            .env_remove("TILLIT_MASTER_KEY")
            .env("RUST_LOG", "info")
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("start tillit serve");
        Serve { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                panic!("tillit serve did not stop within {within:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An initialised data dir with its ports.
pub struct Estate {
    pub tmp: tempfile::TempDir,
    pub dir: DataDir,
    pub nats_port: u16,
    pub http_port: u16,
    pub trust_domain: String,
    /// Where the responder next to every server listens (`ocsp.local_url`).
    pub ocsp_port: u16,
}

impl Estate {
    /// `tillit init` a fresh data dir on free ports.
    pub fn init(trust_domain: &str) -> Self {
        Self::init_args(trust_domain, &[])
    }

    /// `tillit init` with a leafnode listener for sites (its port in `leaf_port()`).
    pub fn init_with_leaf(trust_domain: &str) -> (Self, u16) {
        let leaf = free_port();
        (Self::init_args(trust_domain, &["--leaf-port", &leaf.to_string()]), leaf)
    }

    /// `tillit init` with extra flags.
    pub fn init_args(trust_domain: &str, extra: &[&str]) -> Self {
        Self::init_on(trust_domain, free_port(), extra)
    }

    /// `tillit init` with the hub's client port and extra flags.
    pub fn init_on(trust_domain: &str, nats_port: u16, extra: &[&str]) -> Self {
        let (out, e) = Self::create_with(&["init"], tempfile::tempdir().expect("tempdir"), trust_domain, nats_port, extra);
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        e
    }

    /// `tillit import nsc ARGS` into `tmp/data` on free ports (with `init`'s flags): its output
    /// and the estate (whose data dir exists only if it succeeded).
    pub fn import_nsc(trust_domain: &str, tmp: tempfile::TempDir, args: &[&str]) -> (Output, Self) {
        let cmd: Vec<&str> = ["import", "nsc"].into_iter().chain(args.iter().copied()).collect();
        Self::create_with(&cmd, tmp, trust_domain, free_port(), &[])
    }

    /// Run `tillit CMD` that creates the data dir `tmp/data` (`init`, `import nsc`).
    fn create_with(cmd: &[&str], tmp: tempfile::TempDir, trust_domain: &str, nats_port: u16, extra: &[&str]) -> (Output, Self) {
        let data = tmp.path().join("data");
        let http_port = free_port();
        let ocsp_port = free_port();
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--data-dir".into(),
            data.to_str().unwrap().into(),
            "--trust-domain".into(),
            trust_domain.into(),
            "--nats-url".into(),
            format!("nats://127.0.0.1:{nats_port}"),
            "--http-addr".into(),
            format!("127.0.0.1:{http_port}"),
        ]);
        if !extra.contains(&"--ocsp-local-url") {
            args.extend(["--ocsp-local-url".to_string(), format!("http://127.0.0.1:{ocsp_port}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tillit(&args);
        (out, Estate { tmp, dir: DataDir::new(data), nats_port, http_port, trust_domain: trust_domain.into(), ocsp_port })
    }

    /// Point at another data dir of this estate (a restored copy): same ports, same temp dir.
    pub fn relocate(&mut self, data: &Path) {
        self.dir = DataDir::new(data);
    }

    pub fn data(&self) -> &str {
        self.dir.root().to_str().unwrap()
    }
    pub fn admin(&self) -> String {
        self.dir.admin().root().to_str().unwrap().to_string()
    }
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    pub fn start_nats(&self) -> NatsServer {
        NatsServer::start(&self.dir.server_conf(), self.nats_port)
    }

    pub fn start_serve(&self) -> Serve {
        Serve::start(self.dir.root())
    }

    /// `tillit responder --data-dir D` (on `ocsp_port`), once it answers `/healthz`.
    pub fn start_responder(&self) -> Serve {
        let s = Serve::command(self.dir.root(), &["responder", "--data-dir", self.data()]);
        wait_for(Duration::from_secs(10), || http_get(self.ocsp_port, "/healthz").is_some())
            .unwrap_or_else(|| panic!("the responder never listened:\n{}", s.log_text()));
        s
    }

    /// Start serve and wait until `/readyz` says ready.
    pub fn start_serve_ready(&self) -> Serve {
        let s = self.start_serve();
        wait_for(Duration::from_secs(20), || http_get(self.http_port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false))
            .unwrap_or_else(|| panic!("serve never became ready:\n{}", s.log_text()));
        s
    }
}

/// The exit status of `child` once it exits by itself within `within` (`None`: still running).
pub fn exited_within(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_for(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Poll `f` until it is true or `within` passes.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return Some(());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, &[]).map(|r| (r.status, r.body))
}

/// An HTTP answer: status, response headers (names lowercased) and body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of response header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:`port` with extra request headers (`Connection: close`, no chunking).
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<HttpAnswer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let buf = String::from_utf8_lossy(&raw);
    let status: u16 = buf.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpAnswer { status, headers, body: body.to_string() })
}

/// `tillit serve` inside the test process, with an injected clock.
pub struct InProcessServe {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), tillit::server::ServeError>>>,
}

impl InProcessServe {
    pub async fn start(e: &Estate, clock: tillit::clock::SharedClock) -> Self {
        let estate = tillit::estate::Estate::open(e.dir.clone(), clock).expect("open estate");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(tillit::server::serve(estate, async move {
            let _ = rx.await;
        }));
        let port = e.http_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = tokio::task::spawn_blocking(move || http_get(port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false))
                .await
                .unwrap();
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "in-process serve never became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        InProcessServe { stop: Some(tx), handle: Some(handle) }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("serve task").expect("serve ok");
        }
    }
}

impl Drop for InProcessServe {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Create join tokens with the admin identity through the CLI (the contract): one per line.
pub fn create_tokens(e: &Estate, identity: &str, count: u32, ttl: &str) -> Vec<String> {
    let parts: Vec<&str> = identity.split('/').collect();
    let out = tillit(&[
        "token", "create", "--identity", &e.admin(), "--tenant", parts[0], "--project", parts[1], "--env", parts[2],
        "--service", parts[3], "--count", &count.to_string(), "--ttl", ttl,
    ]);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), count as usize, "one token per line and nothing else: {lines:?}");
    for l in &lines {
        assert!(l.starts_with("tillit1."), "{l}");
    }
    lines
}

/// Enroll through the CLI into `out`.
pub fn enroll_cli(token: &str, out: &Path) -> Output {
    let file = out.with_extension("token");
    std::fs::write(&file, token).unwrap();
    tillit(&["enroll", "--token-file", file.to_str().unwrap(), "--out", out.to_str().unwrap()])
}

/// Wait until the server has processed everything this connection sent before (its SUBs
/// included): a request nothing answers comes back as "no responders" only after that.
/// (`flush` only means the bytes left the client.)
pub async fn barrier(c: &async_nats::Client) {
    let r = c.request("tillit.v1.svc.barrier", "".into()).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "barrier round trip: {r:?}"
    );
}

/// Mint one token for `service` and enroll it through the CLI into `tmp/name`.
pub fn enroll_one(e: &Estate, service: &str, name: &str) -> PathBuf {
    let token = create_tokens(e, service, 1, "15m").remove(0);
    let dir = e.tmp.path().join(name);
    let out = enroll_cli(&token, &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// A plain NATS connection as the admin identity.
pub async fn admin_connect(e: &Estate) -> (tillit::identity::IdentityFiles, async_nats::Client) {
    let admin = tillit::identity::load(&tillit::layout::IdentityDir::new(e.admin())).unwrap();
    let nc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&admin, None).unwrap()).await.unwrap();
    (admin, nc)
}

/// A site registered with `tillit site add`: its directory and client port.
pub struct SiteDir {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
}

impl SiteDir {
    pub fn conf(&self) -> PathBuf {
        self.dir.join("server.conf")
    }
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    /// Start its leaf nats-server.
    pub fn start(&self) -> NatsServer {
        NatsServer::start(&self.conf(), self.port)
    }
    pub fn agent_token(&self) -> PathBuf {
        self.dir.join("agent.token")
    }
}

/// `tillit site add NAME` into `tmp/site-NAME` on a free port, listening on loopback.
pub fn site_add(e: &Estate, name: &str) -> SiteDir {
    let port = free_port();
    let dir = e.tmp.path().join(format!("site-{name}"));
    let out = tillit(&[
        "site", "add", name, "--nats-port", &port.to_string(), "--host", "127.0.0.1", "--out", dir.to_str().unwrap(),
        "--identity", &e.admin(),
    ]);
    assert!(out.status.success(), "site add: {}", stderr(&out));
    SiteDir { name: name.into(), dir, port }
}

/// A running `tillit agent`, SIGKILLed on drop.
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    /// Start an agent for `site` with identity `identity` (enrolled on first start with the
    /// site's token), files in `files`, dialing `url`.
    pub fn start(site: &SiteDir, identity: &Path, files: &Path, url: &str, exec: Option<&str>) -> Self {
        Self::start_args(site, identity, files, url, exec, &[])
    }

    /// [`AgentProc::start`] with extra flags.
    pub fn start_args(site: &SiteDir, identity: &Path, files: &Path, url: &str, exec: Option<&str>, extra: &[&str]) -> Self {
        let log = identity.with_extension(format!("agent-{}.log", free_port()));
        let f = std::fs::File::create(&log).expect("log");
        let mut c = Command::new(tillit_bin());
        c.args(["agent", "--identity"])
            .arg(identity)
            .arg("--out")
            .arg(files)
            .args(["--nats", url, "--token-file"])
            .arg(site.agent_token())
            .env_remove("TILLIT_MASTER_KEY")
            .env("RUST_LOG", "info")
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        if let Some(x) = exec {
            c.args(["--exec", x]);
        }
        c.args(extra);
        AgentProc { child: c.spawn().expect("start tillit agent"), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tillit secret put PATH --value-file … --reader R…` as the admin.
pub fn secret_put(e: &Estate, path: &str, value: &str, readers: &[&str]) -> Output {
    let file = e.tmp.path().join(format!("value-{}", path.replace('/', "_")));
    std::fs::write(&file, value).unwrap();
    let mut args = vec!["secret", "put", path, "--value-file", file.to_str().unwrap()];
    for r in readers {
        args.push("--reader");
        args.push(r);
    }
    let admin = e.admin();
    args.extend(["--identity", &admin]);
    tillit(&args)
}

/// Connect with the certificate of identity dir `cert_of` and the JWT of `creds_of` (a fresh
/// connection: a TLS handshake with OCSP, then authorization). At most one reconnect.
pub async fn connect_with_cert_of(url: &str, cert_of: &Path, creds_of: &Path) -> Result<async_nats::Client, String> {
    use tillit::client::tls;
    let c = tillit::identity::load(&tillit::layout::IdentityDir::new(cert_of)).unwrap();
    let j = tillit::identity::load(&tillit::layout::IdentityDir::new(creds_of)).unwrap();
    let tls_cfg = tls::client_config(&c.ca_pem, tls::SwappableCert::new(tls::certified_key(&c.cert_pem, c.key_pem.expose()).unwrap())).unwrap();
    let creds = tillit::issuer::creds::format(&j.user_jwt, &j.user_seed);
    async_nats::ConnectOptions::with_credentials(creds.expose())
        .unwrap()
        .require_tls(true)
        .tls_client_config(tls_cfg)
        .custom_inbox_prefix(&j.info.inbox_prefix)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(1))
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// How many of tillit's own CAs a PEM bundle holds: its certificates, less the break-glass CA
/// the hub's trust file also pins (`DATA/break-glass.json`).
pub fn tillit_cas_in(e: &Estate, bundle: &Path) -> usize {
    let text = std::fs::read_to_string(bundle).unwrap_or_default();
    let all = text.matches("BEGIN CERTIFICATE").count();
    let pinned = std::fs::read_to_string(e.dir.break_glass_record())
        .ok()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
        .and_then(|v| v["ca_cert_pem"].as_str().map(|p| text.contains(p.trim())))
        .unwrap_or(false);
    all - usize::from(pinned)
}

/// Publish on a subject the identity may use and read it back: the connection is live and
/// carries the identity's own permissions.
pub async fn round_trip(c: &async_nats::Client, subject: &str) -> bool {
    let Ok(mut sub) = c.subscribe(subject.to_string()).await else { return false };
    barrier(c).await;
    if c.publish(subject.to_string(), "ping".into()).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut sub)).await, Ok(Some(m)) if m.payload.as_ref() == b"ping")
}
