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

/// The blocks of a YAML mapping nested at `indent` spaces below the line `section` (a
/// top-level key like `channels:` or `  messages:` under `components:`): name → its lines.
fn blocks(doc: &str, section: &str, indent: usize) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut inside = false;
    let pad = " ".repeat(indent);
    for line in doc.lines() {
        if line == section {
            inside = true;
            continue;
        }
        if !inside || line.trim().is_empty() {
            continue;
        }
        let depth = line.len() - line.trim_start().len();
        if depth < indent {
            break;
        }
        if depth == indent {
            let key = line.strip_prefix(&pad).unwrap_or(line).trim_end_matches(':').to_string();
            out.push((key, Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.trim().to_string());
        }
    }
    out
}

fn field<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().trim_matches('\'').trim_matches('"'))
}

/// Every verb in `proto::ENDPOINTS` has its channel, its request type, and its request and reply
/// schemas in the document: a verb added without them fails here.
#[test]
fn every_endpoint_is_in_the_asyncapi_document_with_its_schemas() {
    let doc = asyncapi();
    assert!(doc.starts_with("asyncapi: 3.0.0") || doc.contains("\nasyncapi: 3.0.0"), "AsyncAPI 3.0");
    let channels = blocks(&doc, "channels:", 2);
    let messages = blocks(&doc, "  messages:", 4);
    assert!(channels.len() >= tillit::proto::ENDPOINTS.len() && !messages.is_empty(), "the document parses");
    let schemas_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/subjects/schemas/");
    for spec in tillit::proto::ENDPOINTS {
        let (name, lines) = channels
            .iter()
            .find(|(_, l)| field(l, "address:") == Some(spec.subject))
            .unwrap_or_else(|| panic!("{} is served but has no channel in subjects/asyncapi.yaml", spec.subject));
        let refs: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("$ref: '#/components/messages/")).map(|r| r.trim_end_matches('\'')).collect();
        assert!(refs.len() >= 2, "channel {name} names a request and a reply message");
        let mut request_named = false;
        let mut schemas = BTreeSet::new();
        for r in &refs {
            let (_, m) = messages.iter().find(|(n, _)| n == r).unwrap_or_else(|| panic!("channel {name}: message {r} is not in components"));
            request_named |= field(m, "name:") == Some(spec.kind);
            for l in m {
                if let Some(f) = l.trim_start_matches("- ").strip_prefix("$ref: './schemas/") {
                    schemas.insert(f.trim_end_matches('\'').to_string());
                }
            }
        }
        assert!(request_named, "{}: no request message named {}", spec.subject, spec.kind);
        for (what, file) in [("request", spec.request_schema), ("reply", spec.reply_schema)] {
            assert!(schemas.contains(file), "{}: its {what} schema {file} is not referenced by channel {name} ({schemas:?})", spec.subject);
            let text = std::fs::read_to_string(format!("{schemas_dir}{file}")).unwrap_or_else(|_| panic!("{file} missing"));
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(v.get("type").is_some() || v.get("properties").is_some() || v.get("oneOf").is_some(), "{file} is a schema");
        }
    }
    // Every channel the document lists is a verb or a subject the code knows.
    let others: BTreeSet<&str> = [
        tillit::subjects::EVENTS_EXPORT,
        tillit::subjects::NOTIFY_EXPORT,
        tillit::subjects::SYS_CLAIMS_UPDATE,
        tillit::subjects::JOURNAL,
        tillit::subjects::SYS_CONNECT_EVENTS,
        "$KV.TILLIT_OCSP.{serial}",
        "$KV.TILLIT_CALLERS.{project}.{service}",
        "tillit.v1.callout.{account}",
        "$SRV.PING.tillit",
        "$SRV.INFO.tillit",
        "$SRV.STATS.tillit",
    ]
    .into_iter()
    .collect();
    for a in channel_addresses(&doc) {
        assert!(
            tillit::proto::endpoint(&a).is_some() || others.contains(a.as_str()),
            "asyncapi lists {a}, which the code does not know"
        );
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
