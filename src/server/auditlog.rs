//! The audit log over NATS (`audit.tail`, `audit.verify`): what `tillit audit` reads from the
//! data dir, for admins who hold none. Records go out without the store changes they carried.

use super::Ctx;
use crate::audit::{self, Record};
use crate::error::ApiError;
use crate::proto::{AuditRecordInfo, AuditTailReply, AuditTailRequest, AuditVerifyReply, AuditVerifyRequest, MAX_AUDIT_TAIL};

serve_verbs! { AuditTail(call) => tail, AuditVerify => verify }

/// How many records a tail looks through for a tenant-confined auditor's.
pub(crate) const TAIL_SCAN: usize = 20_000;

/// The tenant an audit record is about, if any: the first segment of its target (a service id,
/// a secret path, or a SPIFFE id of this trust domain); never tillit's own.
pub(crate) fn record_tenant<'a>(trust_domain: &str, target: &'a str) -> Option<&'a str> {
    let prefix = format!("spiffe://{trust_domain}/");
    let path = target.strip_prefix(prefix.as_str()).unwrap_or(target);
    let first = path.split('/').next()?;
    (path.contains('/') && first != crate::names::AGENT_TENANT && crate::names::check_segment("tenant", first).is_ok()).then_some(first)
}

/// The tenant a record concerns: its target's, else the tenant a refused request reached
/// (`detail.tenant`).
pub(crate) fn tenant_of_record<'a>(trust_domain: &str, r: &'a Record) -> Option<&'a str> {
    record_tenant(trust_domain, &r.target).or_else(|| {
        r.detail.as_ref().and_then(|d| d.get("tenant")).and_then(|t| t.as_str()).filter(|t| crate::names::check_segment("tenant", t).is_ok())
    })
}

fn info(r: Record) -> AuditRecordInfo {
    AuditRecordInfo { seq: r.seq, time: r.time, actor: r.actor, action: r.action, target: r.target, outcome: r.outcome, detail: r.detail }
}

/// The last `n` records `keep` selects among the last `scan` (at least `n`), oldest first,
/// wherever the journal is kept.
pub(crate) async fn last_records(ctx: &Ctx, n: usize, scan: usize, before: Option<u64>, keep: impl FnMut(&Record) -> bool + Send + 'static) -> Result<Vec<Record>, ApiError> {
    let scan = scan.max(n);
    let e = &ctx.estate;
    match (&e.config.store, e.store().nats()) {
        (crate::config::StoreBackend::JetStream { journal, .. }, Some(client)) => {
            audit::tail_stream(client, journal, n, scan, before, keep).await.map_err(|err| super::unavailable(&format!("cannot read the journal: {err}")))
        }
        _ => {
            let path = e.dir.audit_log();
            let mut keep = keep;
            tokio::task::spawn_blocking(move || audit::tail_before(&path, scan, before).map(|all| {
                let mut v: Vec<Record> = all.into_iter().filter(|r| keep(r)).collect();
                let skip = v.len().saturating_sub(n);
                v.drain(..skip);
                v
            }))
            .await
            .map_err(ApiError::internal)?
            .map_err(|err| ApiError::internal(format!("cannot read the audit log: {err}")))
        }
    }
}

async fn tail(ctx: &Ctx, call: &mut super::dispatch::Call, req: AuditTailRequest) -> Result<AuditTailReply, ApiError> {
    if !(1..=MAX_AUDIT_TAIL).contains(&req.n) {
        return Err(ApiError::bad_request(format!("n must be between 1 and {MAX_AUDIT_TAIL}")));
    }
    let access = call.access()?.clone();
    let td = ctx.estate.trust_domain().to_string();
    // A confined auditor's records are found among more (most belong to other tenants).
    let scan = if access.confined() { TAIL_SCAN } else { req.n };
    // A confined auditor sees its tenants' records, and its own (its refusals name no tenant).
    let me = call.caller()?.id.clone();
    let keep = move |r: &Record| !access.confined() || r.actor == me || tenant_of_record(&td, r).is_some_and(|t| access.sees(t));
    let records = last_records(ctx, req.n, scan, req.before, keep).await?;
    Ok(AuditTailReply { records: records.into_iter().map(info).collect() })
}

async fn verify(ctx: &Ctx, _req: AuditVerifyRequest) -> Result<AuditVerifyReply, ApiError> {
    let e = &ctx.estate;
    let key = e.audit_key();
    let result = match (&e.config.store, e.store().nats()) {
        (crate::config::StoreBackend::JetStream { journal, .. }, Some(client)) => audit::read_stream(client, journal, &key, |_| {}).await,
        _ => {
            let path = e.dir.audit_log();
            tokio::task::spawn_blocking(move || audit::verify(&path, Some(&key))).await.map_err(ApiError::internal)?
        }
    }
    .map_err(|err| ApiError::internal(format!("cannot read the audit log: {err}")))?;
    Ok(match result {
        Ok(v) => AuditVerifyReply { ok: true, records: v.records, head: v.head, authenticated: v.authenticated, anchored: v.anchored, error: None },
        Err(c) => AuditVerifyReply { ok: false, records: c.seq.saturating_sub(1), head: String::new(), authenticated: 0, anchored: false, error: Some(c.to_string()) },
    })
}

#[cfg(test)]
mod tests {
    use super::record_tenant;

    #[test]
    fn records_name_their_tenant() {
        let td = "example.org";
        assert_eq!(record_tenant(td, "acme/shop/prod/orders"), Some("acme"));
        assert_eq!(record_tenant(td, "spiffe://example.org/acme/shop/prod/orders"), Some("acme"));
        assert_eq!(record_tenant(td, "globex/a/dev/db-password"), Some("globex"));
        assert_eq!(record_tenant(td, "spiffe://example.org/tillit/admin/bob"), None);
        assert_eq!(record_tenant(td, "tillit/admins/bob/admin"), None);
        assert_eq!(record_tenant(td, "site:edge1"), None);
        assert_eq!(record_tenant(td, "tillit.v1.admin.grant"), None);
        assert_eq!(record_tenant(td, "estate"), None);
        assert_eq!(record_tenant(td, "spiffe://other.org/acme/x/y/z"), None);
    }
}
