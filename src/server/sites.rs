//! Sites: registering a site (`site add`), listing sites with their agents' progress, the
//! agents' signed acknowledgements (`tillit.v1.svc.ack`), and their renewals of the site
//! server's certificate and leafnode users (`tillit.v1.svc.site.renew`).

use super::accounts::push;
use super::Ctx;
use crate::audit::Entry;
use crate::clock::rfc3339;
use crate::envelope::{TrustSet, Verifier};
use crate::error::{ApiError, ErrorCode};
use crate::estate::sites::{AgentStatus, SiteRecord};
use crate::names::agent_service_id;
use crate::estate::{IdentityRecord, BOOTSTRAP_ACCOUNT, SYS_ACCOUNT, TILLIT_ACCOUNT};
use crate::identity::IdentityKind;
use crate::proto::{
    AckData, AckOutcome, AckReply, AckRequest, SiteAddReply, SiteAddRequest, SiteInfo, SiteListReply, SiteListRequest,
    SiteRenewReply, SiteRenewRequest,
};
use crate::replay::Seen;
use crate::subjects;

// === verbs ===

serve_verbs! { SiteAdd(caller) => add, SiteList => list, SiteRemove(caller) => remove, Ack(caller) => ack, SiteRenew(caller) => renew }

/// Longest an agent token may live.
const MAX_AGENT_TOKEN_TTL: i64 = 7 * 86_400;
/// Longest error text kept from an agent's failure report.
const MAX_ERROR_CHARS: usize = 512;

fn check_listen(listen: &str) -> Result<(), ApiError> {
    let bad = || ApiError::bad_request(format!("listen address {listen:?} must be HOST:PORT"));
    let (h, p) = listen.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = p.parse().map_err(|_| bad())?;
    if port == 0 || h.is_empty() || h.len() > 253 || h.contains(char::is_whitespace) || h.contains('"') {
        return Err(bad());
    }
    Ok(())
}

/// Whether something accepts TCP connections at a leafnode URL (`tls://host:port`) within 1 s.
async fn leaf_answers(url: &str) -> bool {
    let hostport = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    matches!(tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(hostport)).await, Ok(Ok(_)))
}

async fn add(ctx: &Ctx, caller: &IdentityRecord, req: SiteAddRequest) -> Result<SiteAddReply, ApiError> {
    let e = ctx.estate.clone();
    let hub_urls = e.config.leaf_urls();
    if hub_urls.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the hub has no leafnode listener: set nats.leaf_port in tillit.toml (or `tillit init --leaf-port P`), \
             run `tillit config render`, and restart both",
        ));
    }
    // The listener the config names must really be there: a site server would dial nothing.
    let mut answers = false;
    for u in &hub_urls {
        answers = answers || leaf_answers(u).await;
    }
    if !answers {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "the hub's leafnode listener ({}) does not answer: restart the hub's nats-server with the config tillit wrote \
                 (`tillit config render` after changing nats.leaf_port)",
                hub_urls.join(", ")
            ),
        ));
    }
    check_listen(&req.listen)?;
    if req.hosts.len() > 16 || req.hosts.iter().any(|h| h.is_empty() || h.len() > 253 || h.contains(char::is_whitespace)) {
        return Err(ApiError::bad_request("hosts: at most 16 DNS names or IPs"));
    }
    if !(60..=MAX_AGENT_TOKEN_TTL).contains(&req.agent_token_ttl_secs) {
        return Err(ApiError::bad_request(format!("agent token ttl must be between 60s and {MAX_AGENT_TOKEN_TTL}s")));
    }
    let csr_key = crate::issuer::x509::parse_csr(&req.csr, &req.tillit_user).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let sid = agent_service_id(&req.name).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let _g = e.account_lock().lock().await;
    let (tillit, changed) = e.ensure_agent_role_locked().map_err(ApiError::from)?;
    if changed {
        push(ctx, &tillit, "agent_role").await?;
    }
    let (issue, mut batch) = e
        .issue_site(&req.name, &req.listen, &req.hosts, &csr_key, &req.sys_user, &req.tillit_user, &caller.id)
        .map_err(ApiError::from)?;
    let (tokens, token_batch) = e.create_tokens(&sid, req.agent_token_ttl_secs, 1, &caller.id, None).map_err(ApiError::from)?;
    batch.extend(token_batch);
    let token = tokens.into_iter().next().ok_or_else(|| ApiError::internal("no agent token minted"))?;
    let entry = Entry::ok(&caller.id, "site.add", &format!("site:{}", req.name))
        .detail(serde_json::json!({
            "listen": req.listen, "cert_serial": issue.site.cert_serial, "leaf_users": issue.site.leaf_users,
            "agent_token_id": token.id, "agent_token_expires_at": token.expires_at,
        }))
        .batch(batch);
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    if let Err(err) = ctx.events.ensure_site_stream(&req.name).await {
        tracing::warn!(site = %req.name, "cannot create the site's stream yet (its first agent does): {err}");
    }
    tracing::info!(site = %req.name, listen = %req.listen, by = %caller.id, "site added");
    let mut preload = std::collections::BTreeMap::new();
    for name in [SYS_ACCOUNT, TILLIT_ACCOUNT, BOOTSTRAP_ACCOUNT] {
        let a = e.account(name).map_err(ApiError::from)?;
        preload.insert(a.public_key, a.jwt);
    }
    Ok(SiteAddReply {
        site: info(&issue.site, &[], 0, &e.ca_fingerprint()),
        cert_pem: issue.cert_pem,
        ca_pem: e.ca_bundle_pem(),
        operator_jwt: e.meta.operator_jwt.clone(),
        system_account: e.account(SYS_ACCOUNT).map_err(ApiError::from)?.public_key,
        tillit_account: tillit.public_key,
        preload,
        sys_user_jwt: issue.sys_user_jwt,
        tillit_user_jwt: issue.tillit_user_jwt,
        hub_urls,
        ocsp_when_unreachable: Some(if e.config.ocsp_admit_when_unreachable { "admit" } else { "refuse" }.into()),
        agent_token: token.encode().expose().to_string(),
    })
}

/// A site's summary from its agents' statuses (`lag` = the largest backlog of any agent).
fn info(site: &SiteRecord, agents: &[&AgentStatus], lag: u64, current_ca: &str) -> SiteInfo {
    let slowest = agents.iter().min_by_key(|a| a.last_seq);
    let last_ack = agents.iter().filter_map(|a| a.last_ack_at).max();
    let last_error = agents.iter().filter(|a| a.last_error.is_some()).max_by_key(|a| a.last_failure_at).and_then(|a| a.last_error.clone());
    SiteInfo {
        name: site.name.clone(),
        listen: site.listen.clone(),
        created_at: rfc3339(site.created_at),
        agents: agents.len(),
        last_applied_seq: slowest.map(|a| a.last_seq).unwrap_or(0),
        last_event_id: slowest.and_then(|a| a.last_event_id.clone()),
        last_event_type: slowest.and_then(|a| a.last_event_type.clone()),
        lag_events: lag,
        last_ack_at: last_ack.map(rfc3339),
        last_ack_unix: last_ack,
        failures: agents.iter().map(|a| a.failures).sum(),
        last_error,
        cert_expires_at: Some(rfc3339(site.cert_expires_at)),
        cert_from_current_ca: site.cert_ca.as_deref() == Some(current_ca),
    }
}

/// Every site with its agents' progress; the lag comes from each agent's durable consumer.
pub(super) async fn site_infos(ctx: &Ctx) -> Result<Vec<SiteInfo>, ApiError> {
    let e = &ctx.estate;
    let sites = e.sites().map_err(ApiError::from)?;
    if sites.is_empty() {
        return Ok(vec![]);
    }
    let statuses = e.agent_statuses().map_err(ApiError::from)?;
    let current_ca = e.ca_fingerprint();
    let mut out = Vec::with_capacity(sites.len());
    for s in &sites {
        let agents: Vec<&AgentStatus> = statuses.iter().filter(|a| a.site == s.name).collect();
        // The site is as far as its slowest agent: one consumer lookup per site, not per agent.
        let mut lag = 0u64;
        if let Some(slowest) = agents.iter().min_by_key(|a| a.last_seq) {
            match ctx.events.consumer_lag(&s.name, &slowest.consumer).await {
                Ok(l) => lag = l,
                Err(err) => tracing::debug!(consumer = %slowest.consumer, "no lag for agent: {err}"),
            }
        }
        out.push(info(s, &agents, lag, &current_ca));
    }
    Ok(out)
}

/// Refresh the per-site gauges (`tillit_site_lag_events`, `tillit_site_last_ack_timestamp_seconds`).
pub(super) async fn refresh_site_gauges(ctx: &Ctx) {
    let Ok(infos) = site_infos(ctx).await else { return };
    for i in infos {
        ctx.metrics.set_site(&i.name, i.lag_events, i.last_ack_unix);
    }
}

/// A site's agent renews its server's certificate (for a CSR made at the site, CN = the site's
/// TILLIT leafnode user) and its leafnode users' JWTs. Server certificates come from the current
/// CA only once every client trusts it: during a CA rotation that is when the old CA's client
/// certificates have all expired (the control plane then asks the agents, `ca.rotated` phase
/// `reissue`).
async fn renew(ctx: &Ctx, caller: &IdentityRecord, req: SiteRenewRequest) -> Result<SiteRenewReply, ApiError> {
    let e = &ctx.estate;
    let (IdentityKind::Agent, Some(name)) = (caller.kind, caller.site.as_deref()) else {
        return Err(ApiError::forbidden("only a site's agent renews its server's certificate"));
    };
    let site = e
        .site(name)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::forbidden(format!("site {name} was removed; its agents cannot renew it")))?;
    if !e.server_issuance_open() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "a CA rotation is in progress and not every client trusts the new CA yet; the site's certificate is re-issued when the old CA retires",
        ));
    }
    let tillit_user = site.leaf_users.get(1).ok_or_else(|| ApiError::internal("site record without its TILLIT leafnode user"))?;
    let csr_key = crate::issuer::x509::parse_csr(&req.csr, tillit_user).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let (issue, batch) = e.reissue_site(name, &csr_key).map_err(ApiError::from)?;
    let ca = e.ca_fingerprint();
    let entry = Entry::ok(&caller.id, "site.renew", name)
        .detail(serde_json::json!({ "serial": issue.site.cert_serial, "expires_at": issue.site.cert_expires_at, "ca": ca }))
        .batch(batch);
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    tracing::info!(site = name, serial = %issue.site.cert_serial, "site server certificate re-issued");
    Ok(SiteRenewReply {
        site: name.to_string(),
        cert_pem: issue.cert_pem,
        sys_user_jwt: issue.sys_user_jwt,
        tillit_user_jwt: issue.tillit_user_jwt,
        ca_pem: e.ca_bundle_pem(),
        ca_fingerprint: ca,
        expires_at: rfc3339(issue.site.cert_expires_at),
        expires_at_unix: issue.site.cert_expires_at,
    })
}

async fn list(ctx: &Ctx, req: SiteListRequest) -> Result<SiteListReply, ApiError> {
    let mut sites = site_infos(ctx).await?;
    sites.sort_by(|a, b| a.name.cmp(&b.name));
    let (sites, next) = super::paging::page(sites, |s| s.name.clone(), req.limit, req.after.as_deref())?;
    Ok(SiteListReply { sites, next })
}

/// An agent's acknowledgement: a JWS envelope signed by the agent's own nkey (pinned from its
/// identity record, selected by issuer = the agent's SPIFFE id), for the control plane, once.
async fn ack(ctx: &Ctx, caller: &IdentityRecord, req: AckRequest) -> Result<AckReply, ApiError> {
    let e = &ctx.estate;
    let (IdentityKind::Agent, Some(site)) = (caller.kind, caller.site.as_deref()) else {
        return Err(ApiError::forbidden("only site agents acknowledge events"));
    };
    let now = e.clock().now_unix();
    let trust = TrustSet::single(&caller.id, &caller.user_public_key).map_err(ApiError::internal)?;
    let verifier = Verifier::new(trust, vec![crate::envelope::issuer(e.trust_domain())], 1);
    let ev = verifier
        .check::<AckData>(&req.envelope, subjects::ENVELOPE_AGENT_ACK, now)
        .map_err(|err| ApiError::unauthenticated(format!("acknowledgement envelope refused: {err}")))?;
    if ev.aud == crate::envelope::AUD_ALL {
        return Err(ApiError::unauthenticated("an acknowledgement must be addressed to this control plane"));
    }
    match ctx.replay.check_and_insert(&ev.id, ev.exp, now) {
        Seen::New => {}
        Seen::Replay => return Err(ApiError::new(ErrorCode::Replayed, "this acknowledgement was already received")),
        Seen::Full | Seen::SignerQuota => return Err(super::unavailable("too many requests in flight; retry shortly")),
    }
    let d = ev.data;
    if d.site != site {
        return Err(ApiError::forbidden(format!("this agent belongs to site {site}, not {}", d.site)));
    }
    if d.seqs.len() > 10_000 || d.event_ids.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10,000 events per acknowledgement"));
    }
    let mut st = e
        .agent_status(&caller.user_public_key)
        .map_err(ApiError::from)?
        .unwrap_or_else(|| AgentStatus {
            site: site.to_string(),
            user_public_key: caller.user_public_key.clone(),
            consumer: caller.name.clone(),
            ..Default::default()
        });
    let top = d.seqs.iter().copied().max().unwrap_or(0);
    match d.outcome {
        AckOutcome::Applied => {
            if top > st.last_seq {
                st.last_seq = top;
                st.last_event_id = d.event_ids.last().cloned();
                st.last_event_type = d.last_event_type.clone();
            }
            st.applied += d.seqs.len() as u64;
            st.last_ack_at = Some(now);
            ctx.metrics.site_acks.inc();
        }
        AckOutcome::Failed => {
            st.failures += 1;
            st.last_failure_at = Some(now);
            st.last_error = Some(d.error.clone().unwrap_or_else(|| "unspecified".into()).chars().take(MAX_ERROR_CHARS).collect());
            ctx.metrics.site_failures.inc();
            tracing::warn!(site, agent = %caller.name, error = ?st.last_error, "site agent could not apply events");
        }
    }
    e.put_agent_status(&st).map_err(ApiError::from)?;
    let what = if d.outcome == AckOutcome::Applied { Entry::ok(&caller.id, "ack", &format!("site:{site}")) } else {
        Entry::denied(&caller.id, "ack", &format!("site:{site}"), "apply_failed")
    };
    ctx.journal.record_relaxed(what.detail(serde_json::json!({
        "agent": caller.name, "seqs": d.seqs, "event_ids": d.event_ids, "envelope_id": ev.id, "error": d.error,
    })));
    Ok(AckReply { recorded: true, last_seq: st.last_seq })
}

/// At start: every site's stream and every live agent's consumer on it exist (estates from
/// before per-site streams get them here; an agent re-reads its site's events from the start
/// and skips what it applied), and the agents' template is current.
pub(super) async fn start_sites(ctx: &Ctx) {
    let e = &ctx.estate;
    if matches!(e.agent_role(), Ok(Some(_))) {
        let _g = e.account_lock().lock().await;
        match e.ensure_agent_role_locked() {
            Ok((acct, true)) => {
                if let Err(err) = push(ctx, &acct, "agent_role").await {
                    tracing::warn!("cannot push the agents' new template: {}", err.message);
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!("agents' template: {err}"),
        }
    }
    for site in e.sites().unwrap_or_default() {
        if let Err(err) = ctx.events.ensure_site_stream(&site.name).await {
            tracing::error!(site = %site.name, "cannot create the site's stream: {err}");
        }
        // A site whose leafnode users carry permissions from before sites were confined: its
        // agent is asked (once) to re-issue its server's certificate and leafnode JWTs, which
        // come with the current permissions.
        let key = format!("site_upgrade_asked/{}", site.name);
        let asked: Option<u32> = e.meta_flag(&key).ok().flatten();
        if site.leaf_perms < crate::estate::sites::LEAF_PERMS_VERSION && asked != Some(crate::estate::sites::LEAF_PERMS_VERSION) {
            match super::ca::announce(ctx, Some(&site.name), crate::proto::CaEventPhase::Reissue).await {
                Ok(seq) => {
                    tracing::warn!(site = %site.name, seq, "site's leafnode credentials predate the current permissions; asked its agent to re-issue them");
                    if let Err(err) = e.set_meta_flag(&key, &crate::estate::sites::LEAF_PERMS_VERSION) {
                        tracing::warn!(site = %site.name, "cannot note that the site was asked: {err}");
                    }
                    ctx.journal.record_relaxed(
                        Entry::ok("tillit", "site.upgrade", &format!("site:{}", site.name))
                            .detail(serde_json::json!({ "leaf_perms": site.leaf_perms, "to": crate::estate::sites::LEAF_PERMS_VERSION, "event_seq": seq })),
                    );
                }
                Err(err) => tracing::error!(site = %site.name, "cannot ask the site to re-issue its credentials: {}", err.message),
            }
        }
    }
    for a in e.agent_statuses().unwrap_or_default() {
        // Its site's stream was ensured above.
        if let Err(err) = ctx.events.ensure_consumer_on_site_stream(&a.consumer, &a.site).await {
            tracing::error!(site = %a.site, consumer = %a.consumer, "cannot create the agent's consumer: {err}");
        }
    }
}

/// Every live agent's consumer is on the hub. Agents' consumers keep their position in the
/// hub's memory ([`super::stream::Events::ensure_consumer_on_site_stream`]), so a hub restart
/// drops them: they are made again here, and each agent re-reads its site's stream from the
/// start, skipping what it applied. When a site's stream has as many consumers as agents on
/// record (the usual case: a revoked agent's consumer stays until its site goes), this costs one
/// stream lookup per site; only otherwise are names listed and identities read.
pub(super) async fn heal_agent_consumers(ctx: &Ctx) {
    let e = &ctx.estate;
    let sites = match e.sites() {
        Ok(s) if !s.is_empty() => s,
        _ => return,
    };
    let Ok(recorded) = e.all_agent_statuses() else { return };
    let now = e.clock().now_unix();
    for s in &sites {
        let on_record: Vec<&AgentStatus> = recorded.iter().filter(|a| a.site == s.name).collect();
        if on_record.is_empty() {
            continue;
        }
        match ctx.events.consumer_count(&s.name).await {
            Ok(n) if n >= on_record.len() => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(site = %s.name, "cannot read the site's stream: {err}");
                continue;
            }
        }
        let have = match ctx.events.consumer_names(&s.name).await {
            Ok(h) => h,
            Err(err) => {
                tracing::debug!(site = %s.name, "cannot list the site's consumers: {err}");
                continue;
            }
        };
        let missing: Vec<&AgentStatus> =
            on_record.into_iter().filter(|a| !have.contains(&a.consumer) && e.agent_live(a, now).unwrap_or(false)).collect();
        if missing.is_empty() {
            continue;
        }
        tracing::warn!(site = %s.name, missing = missing.len(), "agents' consumers are missing on the hub (was it restarted?); making them again");
        let mut made = 0usize;
        for a in missing {
            match ctx.events.ensure_consumer_on_site_stream(&a.consumer, &a.site).await {
                Ok(()) => made += 1,
                Err(err) => tracing::warn!(site = %a.site, consumer = %a.consumer, "cannot make the agent's consumer again: {err}"),
            }
        }
        tracing::info!(site = %s.name, made, "agents' consumers made again; their agents re-read the site's stream");
    }
}

/// `tillit site remove NAME`: the site's agents and its server's leafnode users are revoked (the
/// server's links to the hub drop, the agents are cut off and never renew), its record and its
/// agents' consumers go. A CA rollout no longer waits for it.
async fn remove(ctx: &Ctx, caller: &IdentityRecord, req: crate::proto::SiteRemoveRequest) -> Result<crate::proto::SiteRemoveReply, ApiError> {
    let e = &ctx.estate;
    if req.reason.as_deref().map(str::len).unwrap_or(0) > 512 {
        return Err(ApiError::bad_request("reason is longer than 512 characters"));
    }
    let site = e
        .site(&req.name)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no site {}", req.name)))?;
    let now = e.clock().now_unix();
    let _g = e.account_lock().lock().await;
    let agents: Vec<IdentityRecord> = e
        .identities()
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|i| i.site.as_deref() == Some(site.name.as_str()) && i.state == crate::estate::IdentityState::Active)
        .collect();
    let (sys_user, tillit_user) = match site.leaf_users.as_slice() {
        [s, t, ..] => (s.clone(), t.clone()),
        _ => return Err(ApiError::internal("site record without its leafnode users")),
    };
    let mut tillit_revoked: Vec<String> = agents.iter().map(|a| a.user_public_key.clone()).collect();
    tillit_revoked.push(tillit_user.clone());
    // Kept until the last JWT they cover expired: the leafnode users' live as long as the site
    // server's certificate (a year by default), the agents' as long as their identities.
    let until = agents.iter().map(|a| a.expires_at).max().unwrap_or(now).max(site.cert_expires_at);
    let tillit =
        e.preview_revocation(&e.account(TILLIT_ACCOUNT).map_err(ApiError::from)?, &tillit_revoked, until).map_err(ApiError::from)?;
    let sys = e
        .preview_revocation(&e.account(SYS_ACCOUNT).map_err(ApiError::from)?, std::slice::from_ref(&sys_user), site.cert_expires_at)
        .map_err(ApiError::from)?;
    // Its server's certificate is revoked too (OCSP and the CRL say so).
    let b = e.site_removal_batch(&site, &agents, &tillit, &sys, now).map_err(ApiError::from)?;
    let agents_revoked: Vec<String> = agents.iter().map(|a| a.user_public_key.clone()).collect();
    let entry = Entry::ok(&caller.id, "site.remove", &format!("site:{}", site.name))
        .detail(serde_json::json!({ "reason": req.reason, "agents": agents_revoked, "leaf_users": [sys_user, tillit_user],
            "serials": agents.iter().map(|a| &a.cert_serial).collect::<Vec<_>>() }))
        .batch(b);
    // Recorded first, then live (the reconciler completes a push that fails here).
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    super::admin::push_recorded(ctx, &tillit, "site_remove").await?;
    super::admin::push_recorded(ctx, &sys, "site_remove").await?;
    for a in &agents {
        if let Err(err) = ctx.events.delete_consumer(&site.name, &a.name).await {
            tracing::warn!(consumer = %a.name, "cannot delete the agent's consumer: {err}");
        }
    }
    if let Err(err) = ctx.events.delete_site_stream(&site.name).await {
        tracing::warn!(site = %site.name, "cannot delete the site's stream: {err}");
    }
    tracing::info!(site = %site.name, agents = agents.len(), by = %caller.id, "site removed");
    Ok(crate::proto::SiteRemoveReply { name: site.name, agents_revoked, leaf_users_revoked: vec![sys_user, tillit_user] })
}
