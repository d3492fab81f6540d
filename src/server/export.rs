//! `estate.export`: the live estate as a document (`tillit export`, and what `tillit apply`
//! plans against), as the calling admin may see it, with its revision.

use super::Ctx;
use crate::error::ApiError;
use crate::estate::AccountKind;
use crate::policy::grants;
use crate::policy::roles::Access;
use crate::proto::{EstateDoc, EstateExportReply, EstateExportRequest, SecretDoc, ServiceDoc, SiteDoc, ESTATE_DOC_VERSION};
use std::collections::BTreeSet;

serve_verbs! { EstateExport(call) => export }

/// The live estate as `access` sees it: every tenant it holds (all tenants with an account or
/// a secret when unconfined), their services' grants, their secrets' readers, and, for an
/// unconfined admin, the sites.
pub(crate) fn live_document(ctx: &Ctx, access: &Access) -> Result<EstateDoc, ApiError> {
    let e = &ctx.estate;
    let accounts: Vec<_> = e
        .accounts()
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|a| a.kind == AccountKind::Tenant && a.tenant.as_deref().is_some_and(|t| access.sees(t)))
        .collect();
    let secrets: Vec<_> = e.secrets("").map_err(ApiError::from)?.into_iter().filter(|m| access.sees(&m.path.tenant)).collect();
    let mut tenants: BTreeSet<String> = accounts.iter().filter_map(|a| a.tenant.clone()).collect();
    tenants.extend(secrets.iter().map(|m| m.path.tenant.clone()));
    if access.confined() {
        tenants = access.tenants.iter().cloned().collect();
    }
    let mut services = Vec::new();
    for a in &accounts {
        for role in e.roles_of(&a.name).map_err(ApiError::from)? {
            let d = crate::estate::default_permissions(&role.service);
            let mut publish = grants::granted(&role.permissions.publish.allow, &d.publish.allow);
            let mut subscribe = grants::granted(&role.permissions.subscribe.allow, &d.subscribe.allow);
            if publish.is_empty() && subscribe.is_empty() {
                continue;
            }
            publish.sort();
            subscribe.sort();
            services.push(ServiceDoc { id: role.service.to_string(), publish, subscribe });
        }
    }
    services.sort();
    let mut secret_docs: Vec<SecretDoc> = secrets
        .iter()
        .map(|m| {
            let mut readers: Vec<String> = m.readers.iter().map(|r| r.to_string()).collect();
            readers.sort();
            SecretDoc { path: m.path.to_string(), readers }
        })
        .collect();
    secret_docs.sort();
    let mut sites: Vec<SiteDoc> = if access.confined() {
        vec![]
    } else {
        e.sites()
            .map_err(ApiError::from)?
            .into_iter()
            .map(|s| {
                // The names every site's certificate gets are not the document's to say.
                let derived = crate::estate::sites::derived_site_hosts(&s.name, &s.listen);
                let mut hosts: Vec<String> = s.hosts.iter().filter(|h| !derived.contains(h)).cloned().collect();
                hosts.sort();
                SiteDoc { name: s.name, listen: s.listen, hosts }
            })
            .collect()
    };
    sites.sort();
    Ok(EstateDoc { version: ESTATE_DOC_VERSION, tenants: tenants.into_iter().collect(), manage_sites: !access.confined(), services, secrets: secret_docs, sites })
}

/// `sha256:<hex>` of a document's canonical JSON (its fields in their declared order, every list sorted).
pub(crate) fn revision(doc: &EstateDoc) -> Result<String, ApiError> {
    use sha2::Digest;
    let bytes = serde_json::to_vec(doc).map_err(ApiError::internal)?;
    Ok(format!("sha256:{}", data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&bytes))))
}

async fn export(ctx: &Ctx, call: &mut super::dispatch::Call, _req: EstateExportRequest) -> Result<EstateExportReply, ApiError> {
    let access = call.access()?;
    let document = live_document(ctx, access)?;
    Ok(EstateExportReply { revision: revision(&document)?, confined_to: access.tenants.clone(), document })
}
