//! Secrets, served: admin writes arrive sealed to the control plane's xkey; reads leave sealed to
//! the reader's xkey (the one it enrolled with). Values are sealed under the master key at rest,
//! and cross the broker only as ciphertext. Every write is recorded before it happens; every read
//! (allowed or denied) is recorded.

use super::Ctx;
use crate::audit::Entry;
use crate::clock::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::estate::SecretMeta;
use crate::estate::IdentityRecord;
use crate::identity::IdentityKind;
use crate::proto::{
    SealedValue, SecretGetReply, SecretGetRequest, SecretInfo, SecretListReply, SecretListRequest, SecretPathRequest, SecretPutRequest,
    SecretReply, SecretRotateRequest, SecretVersionInfo,
};
use crate::policy::may_read;
use crate::secrets::{Reader, SecretPath, MAX_READERS, MAX_VALUE_BYTES};
use data_encoding::BASE64;
use zeroize::Zeroizing;

// === verbs ===

serve_verbs! {
    SecretPut(caller) => put, SecretRotate(caller) => rotate, SecretList(call) => list, SecretVersions => versions, SecretDelete(caller) => delete,
    SecretGet(caller) => get, SecretReaders(caller) => set_readers,
}

fn info(m: &SecretMeta) -> SecretInfo {
    SecretInfo {
        path: m.path.to_string(),
        readers: m.readers.iter().map(|r| r.to_string()).collect(),
        current_version: m.current(),
        versions: m
            .versions
            .iter()
            .map(|v| SecretVersionInfo { version: v.version, created_at: rfc3339(v.created_at), created_by: v.created_by.clone(), bytes: v.bytes })
            .collect(),
    }
}

fn too_large(n: usize) -> ApiError {
    ApiError::new(ErrorCode::TooLarge, format!("secret values are at most {MAX_VALUE_BYTES} bytes; this one is {n}"))
}

/// Open a value an admin sealed to the control plane.
fn open(ctx: &Ctx, v: &SealedValue) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let sealed = BASE64.decode(v.sealed.as_bytes()).map_err(|_| ApiError::bad_request("sealed value is not base64"))?;
    if sealed.len() > MAX_VALUE_BYTES + 64 {
        return Err(too_large(sealed.len()));
    }
    nkeys::XKey::from_public_key(&v.sender_xkey).map_err(|_| ApiError::bad_request("sender_xkey is not an xkey"))?;
    let plain = ctx.xkey.open(&sealed, &v.sender_xkey).map_err(|_| ApiError::bad_request("sealed value does not open with the control plane's xkey (sealed to another key?)"))?;
    if plain.len() > MAX_VALUE_BYTES {
        return Err(too_large(plain.len()));
    }
    Ok(plain)
}

fn readers(path: &SecretPath, given: &[String]) -> Result<Vec<Reader>, ApiError> {
    if given.is_empty() || given.len() > MAX_READERS {
        return Err(ApiError::bad_request(format!("name 1 to {MAX_READERS} readers (--reader)")));
    }
    let mut out = Vec::new();
    for g in given {
        let r = Reader::parse(g).map_err(|e| ApiError::bad_request(e.to_string()))?;
        r.check_scope(path).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Record first (fail closed), then change.
async fn record(ctx: &Ctx, actor: &str, action: &str, path: &SecretPath, detail: serde_json::Value) -> Result<(), ApiError> {
    ctx.journal.record(Entry::ok(actor, action, &path.to_string()).detail(detail)).await.map_err(super::journal_error).map(|_| ())
}

async fn put(ctx: &Ctx, caller: &IdentityRecord, req: SecretPutRequest) -> Result<SecretReply, ApiError> {
    let readers = readers(&req.path, &req.readers)?;
    let value = open(ctx, &req.value)?;
    let e = &ctx.estate;
    if e.secret(&req.path).map_err(ApiError::from)?.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("{} exists; use `tillit secret rotate` for a new version", req.path)));
    }
    record(ctx, &caller.id, "secret.put", &req.path, serde_json::json!({ "version": 1, "readers": req.readers, "bytes": value.len() })).await?;
    let meta = e.write_secret(&req.path, Some(readers), &value, &caller.id).map_err(ApiError::from)?;
    announce(ctx, &meta).await;
    Ok(SecretReply { secret: info(&meta) })
}

/// New readers for a secret (its versions untouched), recorded with the change.
async fn set_readers(ctx: &Ctx, caller: &IdentityRecord, req: crate::proto::SecretReadersRequest) -> Result<SecretReply, ApiError> {
    let readers = readers(&req.path, &req.readers)?;
    let e = &ctx.estate;
    let meta = e.secret(&req.path).map_err(ApiError::from)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no secret at {}", req.path)))?;
    if meta.readers == readers {
        return Ok(SecretReply { secret: info(&meta) });
    }
    let before: Vec<String> = meta.readers.iter().map(|r| r.to_string()).collect();
    let (next, b) = e.readers_batch(&meta, readers).map_err(ApiError::from)?;
    let entry = Entry::ok(&caller.id, "secret.readers", &req.path.to_string())
        .detail(serde_json::json!({ "before": before, "readers": req.readers }))
        .batch(b);
    ctx.journal.record(entry).await.map_err(super::journal_error)?;
    Ok(SecretReply { secret: info(&next) })
}

async fn rotate(ctx: &Ctx, caller: &IdentityRecord, req: SecretRotateRequest) -> Result<SecretReply, ApiError> {
    let e = &ctx.estate;
    let meta = e.secret(&req.path).map_err(ApiError::from)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no secret at {}", req.path)))?;
    let value = match (&req.value, req.generate) {
        (Some(v), None) => open(ctx, v)?,
        (None, Some(n)) => {
            if !(16..=4096).contains(&n) {
                return Err(ApiError::bad_request("--generate takes 16 to 4096 random bytes"));
            }
            let raw = Zeroizing::new(crate::crypto::random_bytes(n).map_err(ApiError::internal)?);
            Zeroizing::new(data_encoding::BASE64URL_NOPAD.encode(&raw).into_bytes())
        }
        _ => return Err(ApiError::bad_request("give exactly one of a sealed value or --generate N")),
    };
    let version = meta.current() + 1;
    record(ctx, &caller.id, "secret.rotate", &req.path, serde_json::json!({ "version": version, "bytes": value.len(), "generated": req.generate.is_some() })).await?;
    let meta = e.write_secret(&req.path, None, &value, &caller.id).map_err(ApiError::from)?;
    announce(ctx, &meta).await;
    Ok(SecretReply { secret: info(&meta) })
}

/// Broadcast `secret.rotated` (path and version, never the value): to each reader site, or to
/// all when no site reads it.
async fn announce(ctx: &Ctx, meta: &SecretMeta) {
    let data = serde_json::json!({ "path": meta.path.to_string(), "version": meta.current() });
    let sites: Vec<&str> = meta.readers.iter().filter_map(|r| if let Reader::Site(s) = r { Some(s.as_str()) } else { None }).collect();
    let scopes: Vec<Option<&str>> = if sites.is_empty() { vec![None] } else { sites.into_iter().map(Some).collect() };
    let now = ctx.estate.clock().now_unix();
    for site in scopes {
        if let Err(err) = ctx.events.publish(crate::subjects::EventKind::SecretRotated, site, &meta.path.to_string(), &data, now).await {
            tracing::error!(path = %meta.path, "cannot publish secret.rotated: {err}");
        }
    }
}

async fn list(ctx: &Ctx, call: &mut super::dispatch::Call, req: SecretListRequest) -> Result<SecretListReply, ApiError> {
    if req.prefix.len() > 256 || req.prefix.contains("..") {
        return Err(ApiError::bad_request("prefix is malformed"));
    }
    let access = call.access()?;
    let all = ctx.estate.secrets(&req.prefix).map_err(ApiError::from)?;
    // A tenant-confined admin sees its tenants' secrets only.
    let mut secrets: Vec<SecretInfo> = all.iter().filter(|m| access.sees(&m.path.tenant)).map(info).collect();
    secrets.sort_by(|a, b| a.path.cmp(&b.path));
    let (secrets, next) = super::paging::page(secrets, |s| s.path.clone(), req.limit, req.after.as_deref())?;
    Ok(SecretListReply { secrets, next })
}

async fn versions(ctx: &Ctx, req: SecretPathRequest) -> Result<SecretReply, ApiError> {
    let meta = ctx.estate.secret(&req.path).map_err(ApiError::from)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no secret at {}", req.path)))?;
    Ok(SecretReply { secret: info(&meta) })
}

async fn delete(ctx: &Ctx, caller: &IdentityRecord, req: SecretPathRequest) -> Result<SecretReply, ApiError> {
    let e = &ctx.estate;
    let meta = e.secret(&req.path).map_err(ApiError::from)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no secret at {}", req.path)))?;
    record(ctx, &caller.id, "secret.delete", &req.path, serde_json::json!({ "versions": meta.versions.len() })).await?;
    e.delete_secret(&meta).map_err(ApiError::from)?;
    Ok(SecretReply { secret: info(&meta) })
}

/// A read by a service: allowed only to its readers, inside its own tenant and env.
async fn get(ctx: &Ctx, caller: &IdentityRecord, req: SecretGetRequest) -> Result<SecretGetReply, ApiError> {
    let e = &ctx.estate;
    let agent_site = match (caller.kind, caller.site.as_deref()) {
        (IdentityKind::Agent, Some(s)) => Some(s),
        (IdentityKind::Service, _) => None,
        _ => return Err(ApiError::forbidden("only service and site agent identities read secrets")),
    };
    let who = caller.service.as_ref().ok_or_else(|| ApiError::forbidden("this identity names no service"))?;
    let path = match agent_site {
        // An agent names full paths: it reads across tenants, but only what its site may.
        Some(_) => SecretPath::parse(&req.name),
        None => SecretPath::resolve(&req.name, who),
    }
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let deny = |reason: &str| {
        ctx.journal
            .record_relaxed(Entry::denied(&caller.id, "secret.get", &path.to_string(), "forbidden").detail(serde_json::json!({ "reason": reason })));
        // The same answer whether the secret exists or not: nothing leaks to non-readers.
        ApiError::forbidden(format!("{} may not read {path}", caller.id))
    };
    let Some(meta) = e.secret(&path).map_err(ApiError::from)? else {
        return Err(deny("no such secret"));
    };
    let allowed = match agent_site {
        Some(site) => crate::policy::site_may_read(&meta.readers, site),
        None => may_read(&path, &meta.readers, who),
    };
    if !allowed {
        return Err(deny("not a reader"));
    }
    let version = req.version.unwrap_or_else(|| meta.current());
    let value = e
        .secret_value(&path, version)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("{path} has no version {version}")))?;
    let recipient = caller.xkey.as_deref().ok_or_else(|| ApiError::forbidden("this identity has no xkey to seal to; enroll again"))?;
    let cp = &ctx.xkey;
    let sealed = cp.seal(&value, recipient).map_err(ApiError::internal)?;
    ctx.journal.record_relaxed(Entry::ok(&caller.id, "secret.get", &path.to_string()).detail(serde_json::json!({ "version": version })));
    Ok(SecretGetReply { path: path.to_string(), version, value: SealedValue { sealed: BASE64.encode(&sealed), sender_xkey: cp.public_key().to_string() } })
}
