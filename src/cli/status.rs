//! `tillit status --identity DIR [--json]`

use super::AdminArgs;

pub async fn run(admin: AdminArgs) -> anyhow::Result<()> {
    let client = admin.client().await?;
    let s = client.status().await?;
    let mine = &client.identity().info.trust_domain;
    if &s.trust_domain != mine {
        anyhow::bail!(
            "the control plane serves trust domain {:?} but identity {} belongs to {:?}; use an identity of this estate",
            s.trust_domain,
            admin.identity.display(),
            mine
        );
    }
    if admin.json(&s)? {
        return Ok(());
    }
    println!("trust domain   {}", s.trust_domain);
    println!("version        {}", s.version);
    println!("operator       {}", s.operator);
    println!("CA             {} (expires {})", s.ca_fingerprint, s.ca_expires_at);
    println!("NATS           {}", s.nats_urls.join(", "));
    println!("identities     {}", s.counts.identities);
    println!("accounts       {}", s.counts.accounts);
    for (name, acct) in &s.accounts {
        println!("  {name:<20} {:<7} {}", acct.kind, acct.public_key);
    }
    for ca in s.cas.iter().filter(|c| c.state != crate::proto::CaStatus::Current && c.state != crate::proto::CaStatus::Retired) {
        println!("  CA {:<9}   {}{}", ca.state, ca.fingerprint, ca.retire_at.as_ref().map(|t| format!(" (trusted until {t})")).unwrap_or_default());
    }
    if let Some(r) = &s.ca_rollout {
        println!("CA rollout     waiting for sites: {}", if r.sites_pending.is_empty() { "none".to_string() } else { r.sites_pending.join(", ") });
    }
    if !s.sites.is_empty() {
        println!("sites          {}", s.sites.len());
        for site in &s.sites {
            println!(
                "  {:<16} agents {:<3} applied seq {:<6} behind {:<4} failures {:<3} last ack {}",
                site.name,
                site.agents,
                site.last_applied_seq,
                site.lag_events,
                site.failures,
                site.last_ack_at.as_deref().unwrap_or("never")
            );
        }
    }
    if let Some(st) = &s.store {
        match (&st.bucket, &st.journal) {
            (Some(b), Some(j)) => println!("store          jetstream bucket {b}, journal {j}, R{}{}", st.replication, if st.reachable { "" } else { " (UNREACHABLE)" }),
            _ => println!("store          {}", st.backend),
        }
        if let Some(l) = &st.leader {
            println!("leader         {} (token {}, lease until {})", l.replica, l.token, l.expires_at);
        }
        for r in &st.replicas {
            let me = if r.id == st.answered_by { "  (answered)" } else { "" };
            println!("  replica      {:<32} http {:<22} seen {}{me}", r.id, r.http_addr, r.seen_at);
        }
    }
    if let Some(a) = &s.auth {
        match a.mode.as_str() {
            "callout" => println!(
                "auth           callout{}: {} requests here ({} admitted, {} refused), decision p50 {:.2} ms, p99 {:.2} ms",
                a.since.as_deref().map(|t| format!(" since {t}")).unwrap_or_default(),
                a.requests,
                a.admitted,
                a.refused,
                a.p50_ms,
                a.p99_ms
            ),
            m => println!("auth           {m}{}", a.since.as_deref().map(|t| format!(" since {t}")).unwrap_or_default()),
        }
    }
    if let Some(rss) = s.rss_bytes {
        println!("serve memory   {:.1} MiB", rss as f64 / 1048576.0);
    }
    if let Some(a) = &s.availability {
        println!(
            "OCSP           {} answers; local responder {}; when none answers: {}",
            a.ocsp_answers,
            match (&a.ocsp_local_url, a.local_responder_answers) {
                (None, _) => "none".to_string(),
                (Some(u), Some(true)) => format!("{u} (answering)"),
                (Some(u), Some(false)) => format!("{u} (NOT answering here)"),
                (Some(u), None) => u.clone(),
            },
            a.when_unreachable
        );
        for w in &a.warnings {
            println!("WARNING        {w}");
        }
    }
    if let Some(b) = &s.break_glass {
        println!("break-glass    {} (expires {}, {} rotated away)", b.fingerprint, b.expires_at, b.rotated);
        if b.bundle_in_data_dir {
            println!("WARNING        the break-glass bundle is still in the data dir (break-glass.bundle): move it offline");
        }
        if b.connections_total > 0 {
            println!(
                "WARNING        {} connection(s) made with a break-glass bundle, the last at {}: check the audit log (break-glass.connect); rotate it (`tillit break-glass rotate`) once the emergency is over",
                b.connections_total,
                b.last_connection.as_deref().unwrap_or("?")
            );
            for c in &b.connections {
                println!("  break-glass  {}  server {}  from {}  bundle {}", c.at, c.server, c.host, c.bundle);
            }
        }
    }
    println!("you are        {}", s.caller);
    if let Some(role) = s.caller_role {
        let scope = if s.caller_tenants.is_empty() { "the whole estate".to_string() } else { format!("tenants {}", s.caller_tenants.join(", ")) };
        println!("role           {role} ({scope})");
    }
    Ok(())
}
