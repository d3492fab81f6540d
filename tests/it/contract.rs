//! `subjects/asyncapi.yaml` is the contract (house rule 2): every subject the code serves is in
//! it, and every channel it lists is one the code knows.

use std::collections::BTreeSet;

fn asyncapi() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/subjects/asyncapi.yaml")).expect("subjects/asyncapi.yaml")
}

fn channel_addresses(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.trim().strip_prefix("address:"))
        .map(|a| a.trim().trim_matches('\'').trim_matches('"').to_string())
        .collect()
}

#[test]
fn every_served_subject_is_in_the_asyncapi_document() {
    let doc = asyncapi();
    assert!(doc.starts_with("asyncapi: 3.0.0") || doc.contains("\nasyncapi: 3.0.0"), "AsyncAPI 3.0");
    let addrs = channel_addresses(&doc);
    for spec in tillit::server::ENDPOINTS {
        assert!(addrs.contains(spec.subject), "{} is served but not in subjects/asyncapi.yaml", spec.subject);
        assert!(doc.contains(spec.kind), "request type {} is not documented", spec.kind);
    }
    let known: BTreeSet<&str> = [
        tillit::subjects::ADMIN_STATUS,
        tillit::subjects::ADMIN_TOKEN_CREATE,
        tillit::subjects::ADMIN_GRANT,
        tillit::subjects::ADMIN_UNGRANT,
        tillit::subjects::ADMIN_GRANTS,
        tillit::subjects::ADMIN_REVOKE,
        tillit::subjects::ADMIN_LIST,
        tillit::subjects::ADMIN_SECRET_PUT,
        tillit::subjects::ADMIN_SECRET_ROTATE,
        tillit::subjects::ADMIN_SECRET_LIST,
        tillit::subjects::ADMIN_SECRET_VERSIONS,
        tillit::subjects::ADMIN_SECRET_DELETE,
        tillit::subjects::SVC_SECRET_GET,
        tillit::subjects::ADMIN_ROTATE_SIGNING_KEY,
        tillit::subjects::EVENTS_EXPORT,
        tillit::subjects::NOTIFY_EXPORT,
        tillit::subjects::ENROLL,
        tillit::subjects::SVC_RENEW,
        tillit::subjects::SVC_ACK,
        tillit::subjects::SVC_SITE_RENEW,
        tillit::subjects::ADMIN_SITE_ADD,
        tillit::subjects::ADMIN_SITE_LIST,
        tillit::subjects::ADMIN_SITE_REMOVE,
        tillit::subjects::ADMIN_ROTATE_CA,
        tillit::subjects::SYS_CLAIMS_UPDATE,
        "$SRV.PING.tillit",
        "$SRV.INFO.tillit",
        "$SRV.STATS.tillit",
    ]
    .into_iter()
    .collect();
    for a in &addrs {
        assert!(known.contains(a.as_str()), "asyncapi lists {a}, which the code does not know");
    }
}

#[test]
fn schemas_referenced_by_the_document_exist_and_parse() {
    let doc = asyncapi();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/subjects/");
    let mut n = 0;
    for l in doc.lines() {
        if let Some(r) = l.trim().trim_start_matches("- ").strip_prefix("$ref:") {
            let r = r.trim().trim_matches('\'').trim_matches('"');
            if let Some(file) = r.strip_prefix("./") {
                let path = format!("{dir}{}", file.split('#').next().unwrap());
                let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{path} missing"));
                let _: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
                n += 1;
            }
        }
    }
    assert!(n >= 3, "the document references its schemas");
}

#[test]
fn every_wire_error_code_is_in_the_error_schema() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/subjects/schemas/error.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let listed: BTreeSet<String> = v["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    use tillit::error::ErrorCode::*;
    for code in [BadRequest, TooLarge, Unauthenticated, Forbidden, Expired, Replayed, TokenUsed, TokenExpired, TokenInvalid, NotFound, Conflict, LimitExceeded, Internal, Unavailable] {
        assert!(listed.contains(code.as_str()), "{} missing from error.json", code.as_str());
    }
    assert_eq!(listed.len(), 14, "error.json lists codes the code does not have: {listed:?}");
}
