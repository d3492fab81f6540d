//! `tillit rotate signing-key [--retire-after 24h]`, `tillit rotate ca [--finish]`

use super::AdminArgs;
use crate::proto::{RotateSigningKeyReply, RotateSigningKeyRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Rotate the envelope signing key with overlap (admin).
    SigningKey(SigningKeyArgs),
    /// Rotate the CA with overlap: new CA in every bundle, issuance switches once every site
    /// acknowledged, the old CA leaves after its last certificate expired (admin).
    Ca(CaArgs),
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Retire the previous CA now instead of after its last client certificate expired (a
    /// compromised CA): sites' and the hub's server certificates are re-issued first; clients
    /// still holding its certificates must renew.
    #[arg(long)]
    pub finish: bool,
    /// Follow the rotation until its next phase is reached (issuance switched; with --finish,
    /// the previous CA gone), printing each change, for at most this long (s, m, h).
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = "10m")]
    pub wait: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct SigningKeyArgs {
    /// How long the old key keeps verifying (s, m, h, d).
    #[arg(long, default_value = "24h")]
    pub retire_after: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let s = match a.what {
        What::SigningKey(s) => s,
        What::Ca(c) => return rotate_ca(c).await,
    };
    let after = crate::clock::parse_duration(&s.retire_after).map_err(anyhow::Error::msg)?;
    let client = s.admin.client().await?;
    let r: RotateSigningKeyReply = client
        .call::<crate::proto::RotateSigningKey>(RotateSigningKeyRequest { retire_after_secs: after.as_secs() as i64 })
        .await?;
    if !s.admin.json(&r)? {
        println!("envelopes are now signed by {}", r.current);
        println!("{} keeps verifying until {}", r.previous, r.retire_at);
    }
    Ok(())
}

async fn rotate_ca(c: CaArgs) -> anyhow::Result<()> {
    if c.finish {
        // The admin's own certificate and bundle move to the new CA first: once the old CA is
        // gone, a certificate it issued (or a bundle without the new CA) no longer connects.
        let dir = crate::layout::IdentityDir::new(&c.admin.identity);
        let session = crate::client::session::Session::connect(&dir, c.admin.nats.as_deref()).await?;
        session.renew_now().await?;
    }
    let wait = c.wait.as_deref().map(crate::clock::parse_duration).transpose().map_err(anyhow::Error::msg)?;
    let client = c.admin.client().await?;
    let r: crate::proto::RotateCaReply = client.call::<crate::proto::RotateCa>(crate::proto::RotateCaRequest { finish: c.finish }).await?;
    if let Some(within) = wait {
        return follow_rotation(&client, r, c.finish, within, c.admin.json).await;
    }
    if c.admin.json(&r)? {
        return Ok(());
    }
    for ca in &r.cas {
        println!("{:<9} {} (expires {}{})", ca.state, ca.fingerprint, ca.expires_at, ca.retire_at.as_ref().map(|t| format!(", leaves the bundle {t}")).unwrap_or_default());
    }
    match &r.rollout {
        _ if r.phase == crate::proto::RotatePhase::Retiring => {
            println!("the previous CA retires as soon as every site server's certificate was re-issued (see `tillit site list`)");
        }
        Some(ro) if !ro.sites_pending.is_empty() => {
            println!("the new CA is in every bundle; issuance switches once these sites acknowledge: {}", ro.sites_pending.join(", "));
            println!("follow it with `tillit status`");
        }
        _ => println!("issuance switched to the new CA"),
    }
    Ok(())
}

/// Print the rotation's progress from `status` until its next phase: issuance switched (every
/// site acknowledged the new CA) or, with `--finish`, a single CA left. Fails after `within`.
async fn follow_rotation(client: &crate::client::TillitClient, first: crate::proto::RotateCaReply, finish: bool, within: std::time::Duration, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut said = String::new();
    loop {
        let s = client.status().await?;
        let current = s.cas.iter().filter(|ca| ca.state.to_string().trim() != "retired").count();
        let line = match &s.ca_rollout {
            Some(ro) if !ro.sites_pending.is_empty() => format!("distributing: waiting for sites {}", ro.sites_pending.join(", ")),
            _ if finish && current > 1 => "retiring: waiting for every server certificate to come from the new CA".to_string(),
            _ if finish => "done: one CA left, the previous one retired".to_string(),
            _ => "switched: new certificates come from the new CA".to_string(),
        };
        if line != said {
            if !json {
                println!("[{:>4}s] {line}", started.elapsed().as_secs());
            }
            said = line;
        }
        let done = s.ca_rollout.as_ref().is_none_or(|ro| ro.sites_pending.is_empty()) && (!finish || current <= 1);
        if done {
            if json {
                super::print_json(true, &first)?;
            }
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "the rotation did not reach its next phase within {within:?} ({said}); `tillit site list` shows which sites lag"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
