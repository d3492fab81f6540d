//! The estate as code: `tillit export` writes the live estate as `estate.toml`; `tillit apply -f
//! estate.toml [--plan]` shows or makes the change that turns the live estate into it.
//!
//! The plan is computed against the estate's revision (a digest of the exported document). A
//! plan saved with `--plan --save-plan F` is applied with `--plan-file F` and refused if the
//! estate changed since (like a stale lock); `--expect-revision R` does the same for a revision
//! printed by `--plan`. Every step is a verb of its own (grant, ungrant, secret.readers,
//! site.add, site.remove), audited with the calling admin's identity; after the last step the
//! estate is exported again and must match the document.

use super::AdminArgs;
use crate::client::TillitClient;
use crate::policy::plan::{plan, Plan, Step};
use crate::proto::{EstateDoc, EstateExport, EstateExportReply, EstateExportRequest};
use anyhow::Context as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write here instead of standard output.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The document (TOML, as `tillit export` writes it).
    #[arg(long, short = 'f', required_unless_present = "plan_file")]
    pub file: Option<PathBuf>,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: save the plan (document and revision) to this file, for --plan-file.
    #[arg(long, requires = "plan")]
    pub save_plan: Option<PathBuf>,
    /// Apply a plan saved with --save-plan: refused if the estate changed since it was made.
    #[arg(long, conflicts_with_all = ["file", "plan"])]
    pub plan_file: Option<PathBuf>,
    /// Refuse unless the live estate is still at this revision (as `--plan` printed it).
    #[arg(long)]
    pub expect_revision: Option<String>,
    /// Where sites the document adds get their directories (`DIR/<site>`), as `tillit site add --out`.
    #[arg(long, default_value = "sites")]
    pub sites_dir: PathBuf,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A saved plan: the document and the revision it was planned against.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedPlan {
    revision: String,
    document: EstateDoc,
    plan: Plan,
}

/// The document as TOML, with a header saying what it is.
pub fn to_toml(doc: &EstateDoc, revision: &str) -> anyhow::Result<String> {
    let body = toml::to_string(doc).context("encoding the estate as TOML")?;
    Ok(format!("# tillit estate, exported at revision {revision}\n# apply with: tillit apply -f FILE --plan\n\n{body}"))
}

pub async fn export(a: ExportArgs) -> anyhow::Result<()> {
    let client = a.admin.client().await?;
    let r: EstateExportReply = client.call::<EstateExport>(EstateExportRequest {}).await?;
    if a.admin.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let text = to_toml(&r.document, &r.revision)?;
    match &a.out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            tracing::info!(file = %p.display(), revision = %r.revision, "estate exported");
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn print_plan(p: &Plan, revision: &str) {
    println!("estate revision {revision}");
    if p.steps.is_empty() {
        println!("no changes: the estate is what the document says");
    }
    for s in &p.steps {
        println!("  {s}");
    }
    for n in &p.notes {
        println!("  note: {n}");
    }
    for m in &p.problems {
        println!("  cannot: {m}");
    }
}

async fn run_step(client: &TillitClient, step: &Step, sites_dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::proto::*;
    let sid = |s: &str| crate::names::ServiceId::parse(s).map_err(anyhow::Error::from);
    match step {
        Step::Grant { service, publish, subscribe } => {
            client.call::<Grant>(GrantRequest { service: sid(service)?, publish: publish.clone(), subscribe: subscribe.clone() }).await?;
        }
        Step::Ungrant { service, publish, subscribe } => {
            client.call::<Ungrant>(GrantRequest { service: sid(service)?, publish: publish.clone(), subscribe: subscribe.clone() }).await?;
        }
        Step::Readers { path, to, .. } => {
            let path = crate::secrets::SecretPath::parse(path)?;
            client.call::<SecretReaders>(SecretReadersRequest { path, readers: to.clone() }).await?;
        }
        Step::AddSite { name, listen, hosts } => {
            let out = sites_dir.join(name);
            super::site::register(client, name, listen, hosts, std::time::Duration::from_secs(3600), &out).await?;
        }
        Step::RemoveSite { name } => {
            client.call::<SiteRemove>(SiteRemoveRequest { name: name.clone(), reason: Some("tillit apply".into()) }).await?;
        }
    }
    Ok(())
}

pub async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    let (desired, expect) = match (&a.plan_file, &a.file) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let saved: SavedPlan = serde_json::from_str(&text).with_context(|| format!("{} is not a saved plan", f.display()))?;
            (saved.document, Some(saved.revision))
        }
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let doc: EstateDoc = toml::from_str(&text).with_context(|| format!("{} is not an estate document", f.display()))?;
            (doc, a.expect_revision.clone())
        }
        (None, None) => anyhow::bail!("give -f estate.toml or --plan-file"),
    };
    let client = a.admin.client().await?;
    let live: EstateExportReply = client.call::<EstateExport>(EstateExportRequest {}).await?;
    let p = plan(&live.document, &desired, &live.confined_to);
    if let Some(want) = &expect {
        if want != &live.revision {
            anyhow::bail!(
                "the estate changed since this plan was made (revision {want}, now {}): nothing was changed; plan again (`tillit apply -f … --plan`)",
                live.revision
            );
        }
    }
    if a.plan {
        if a.admin.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "revision": live.revision, "plan": p }))?);
        } else {
            print_plan(&p, &live.revision);
        }
        if let Some(f) = &a.save_plan {
            let saved = SavedPlan { revision: live.revision.clone(), document: desired, plan: p.clone() };
            std::fs::write(f, serde_json::to_string_pretty(&saved)?).with_context(|| format!("writing {}", f.display()))?;
            tracing::info!(file = %f.display(), "plan saved; apply it with `tillit apply --plan-file`");
        }
        anyhow::ensure!(p.problems.is_empty(), "{} thing(s) in the document cannot be done (see `cannot:` above)", p.problems.len());
        return Ok(());
    }
    if !p.problems.is_empty() {
        print_plan(&p, &live.revision);
        anyhow::bail!("{} thing(s) in the document cannot be done (see `cannot:` above): nothing was changed", p.problems.len());
    }
    let total = p.steps.len();
    for (i, step) in p.steps.iter().enumerate() {
        tracing::info!(step = i + 1, of = total, "{step}");
        run_step(&client, step, &a.sites_dir)
            .await
            .with_context(|| format!("step {} of {total} ({step}) failed; the steps before it were made; plan again to see what is left", i + 1))?;
        if !a.admin.json {
            println!("  done {step}");
        }
    }
    let after: EstateExportReply = client.call::<EstateExport>(EstateExportRequest {}).await?;
    let left = plan(&after.document, &desired, &after.confined_to);
    if a.admin.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "applied": p.steps, "revision": after.revision, "left": left.steps }))?);
    }
    anyhow::ensure!(left.steps.is_empty(), "after applying, the estate still differs from the document: {:?}", left.steps);
    if !a.admin.json {
        println!("applied {total} change(s); the estate is what the document says (revision {})", after.revision);
    }
    Ok(())
}
