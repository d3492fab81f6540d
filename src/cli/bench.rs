//! `tillit bench enroll|renew --identity ADMIN -n N -c C [--json]`

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
    /// Skip the cfssl baseline.
    #[arg(long)]
    pub no_baseline: bool,
    #[arg(long, env = "TILLIT_NATS_URL")]
    pub nats: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (kind, o) = match &a.what {
        What::Enroll(o) => ("enroll", o),
        What::Renew(o) => ("renew", o),
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
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    if o.json {
        let mut v = serde_json::json!({
            "per_sec": round(ours.per_sec), "p50_ms": round(ours.p50_ms), "p99_ms": round(ours.p99_ms),
            "n": ours.n, "c": ours.c, "errors": ours.errors, "bench": kind, "cpus": cpus,
        });
        if let Some(b) = baseline {
            v["baseline"] = serde_json::json!({"name": b.name, "per_sec": round(b.per_sec), "p50_ms": round(b.p50_ms), "p99_ms": round(b.p99_ms), "c": b.c});
            v["ratio"] = serde_json::json!(round(ours.per_sec / b.per_sec.max(1e-9)));
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
