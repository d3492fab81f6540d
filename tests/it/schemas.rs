//! Live traffic against the contract: every verb of `proto::ENDPOINTS` is driven, raw (signed here,
//! the wire reply captured), and every reply, request body and event a real estate sends
//! is validated against the schema `subjects/asyncapi.yaml` names for it, and the micro service
//! replies (`$SRV.PING|INFO|STATS.tillit`) against the NATS micro (ADR-32) shapes, with
//! `metadata` required (`tests/it/fixtures/micro-*.json`). The validator is python3's
//! `jsonschema` (`tests/it/fixtures/validate.py`; `.ci/run` installs it), so the crate takes no
//! schema dependency.

use crate::harness::*;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tillit::client::RequestSigner;
use tillit::proto::{self, Endpoint};

/// What was seen, with the schema it must satisfy.
#[derive(Default)]
struct Tap {
    cases: Vec<serde_json::Value>,
}

impl Tap {
    fn add(&mut self, what: impl Into<String>, schema: &str, instance: serde_json::Value) {
        self.cases.push(serde_json::json!({ "what": what.into(), "schema": schema, "instance": instance }));
    }

    /// Run the validator: whether everything matched, and what it said.
    fn run(&self) -> (bool, String) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/validate.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (with the jsonschema module: pip install jsonschema)");
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&serde_json::to_vec(&self.cases).unwrap()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success() && said.trim() == format!("ok {}", self.cases.len()), said)
    }

    /// Validate everything at once; panics with every failure.
    fn check(&self) {
        let (ok, said) = self.run();
        assert!(ok, "live traffic does not match the contract:\n{said}");
    }
}

/// Sign `body` for verb `E`, send it raw, and record the request body and the wire reply (its
/// reply schema, or error.json). Returns the reply.
async fn call<E: Endpoint>(tap: &mut Tap, nc: &async_nats::Client, signer: &RequestSigner, body: E::Request) -> serde_json::Value {
    let spec = <E as Endpoint>::SPEC;
    tap.add(format!("{} request body", spec.subject), spec.request_schema, serde_json::to_value(&body).unwrap());
    let token = signer.sign::<E>(&body).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(15), nc.request(spec.subject, token.into()))
        .await
        .unwrap_or_else(|_| panic!("{}: no reply", spec.subject))
        .unwrap_or_else(|e| panic!("{}: {e}", spec.subject));
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_else(|e| panic!("{}: reply is not JSON: {e}", spec.subject));
    let schema = if v.get("error").is_some() { "error.json" } else { spec.reply_schema };
    tap.add(format!("{} reply", spec.subject), schema, v.clone());
    v
}

/// `call`, and the verb must have succeeded.
async fn ok<E: Endpoint>(tap: &mut Tap, nc: &async_nats::Client, signer: &RequestSigner, body: E::Request) -> serde_json::Value {
    let v = call::<E>(tap, nc, signer, body).await;
    assert!(v.get("result").is_some(), "{}: {v}", E::SUBJECT);
    v["result"].clone()
}

fn signer_of(files: &tillit::identity::IdentityFiles) -> RequestSigner {
    let kp = nkeys::KeyPair::from_seed(files.user_seed.expose()).unwrap();
    RequestSigner::new(kp, files.info.trust_domain.clone(), std::sync::Arc::new(tillit::clock::SystemClock))
}

/// The event schemas by event type, as `subjects/asyncapi.yaml` (`x-event-types`) names them.
fn event_schemas() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/subjects/asyncapi.yaml")).unwrap();
    let mut out = BTreeMap::new();
    let mut lines = doc.lines().skip_while(|l| l.trim() != "x-event-types:").skip(1).peekable();
    while let Some(l) = lines.next() {
        let Some(kind) = l.trim().strip_suffix(':').filter(|_| !l.trim().starts_with('$')) else { break };
        let Some(r) = lines.next().and_then(|r| r.trim().strip_prefix("$ref: './schemas/")) else { break };
        out.insert(format!("io.tillit.v1.{kind}"), r.trim_end_matches('\'').to_string());
    }
    assert_eq!(out.len(), 5, "x-event-types lists the five event kinds: {out:?}");
    out
}

/// The decoded body of a signed event envelope (JWS compact).
fn envelope_body(jws: &[u8]) -> serde_json::Value {
    let text = std::str::from_utf8(jws).unwrap();
    let payload = text.split('.').nth(1).unwrap_or_else(|| panic!("not a JWS: {text}"));
    let raw = data_encoding::BASE64URL_NOPAD.decode(payload.trim_end_matches('=').as_bytes()).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// The validator refuses what the schemas refuse (so a green run means something).
#[test]
fn the_validator_refuses_mismatches() {
    let mut tap = Tap::default();
    tap.add("a status reply without its fields", "status-reply.json", serde_json::json!({"result": {}}));
    tap.add("a stats reply without metadata", "micro/micro-stats-response.json", serde_json::json!({
        "type": "io.nats.micro.v1.stats_response", "name": "tillit", "id": "x", "version": "0.1.0",
        "started": "2026-01-01T00:00:00Z", "endpoints": []
    }));
    tap.add("an unknown account kind", "status-reply.json", serde_json::json!({"result": {"accounts": {"X": {"public_key": "A", "kind": "nope", "created_at": "x"}}}}));
    let (ok, said) = tap.run();
    assert!(!ok, "{said}");
    for what in ["a status reply without its fields", "a stats reply without metadata", "an unknown account kind"] {
        assert!(said.contains(what), "{what} not refused: {said}");
    }
    let mut good = Tap::default();
    good.add("an error", "error.json", serde_json::json!({"error": {"code": "forbidden", "message": "no"}}));
    assert!(good.run().0, "{}", good.run().1);
}

#[tokio::test(flavor = "multi_thread")]
async fn live_replies_requests_and_events_match_the_contract() {
    let (e, _leaf) = Estate::init_with_leaf("schemas.example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let (admin, nc) = admin_connect(&e).await;
    let admin_signer = signer_of(&admin);
    // Every event, as it comes (subject, decoded body).
    let mut sub = nc.subscribe("tillit.v1.events.>").await.unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, serde_json::Value)>::new()));
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            sink.lock().unwrap().push((m.subject.to_string(), envelope_body(&m.payload)));
        }
    });
    barrier(&nc).await;
    let mut tap = Tap::default();
    let orders = tillit::ServiceId::parse("acme/shop/prod/orders").unwrap();

    ok::<proto::Status>(&mut tap, &nc, &admin_signer, proto::StatusRequest {}).await;

    // Admins and the audit log.
    let add = proto::AdminAddRequest { name: "carol".into(), role: proto::AdminRole::Auditor, tenants: vec!["acme".into()], ttl_secs: 600 };
    ok::<proto::AdminAdd>(&mut tap, &nc, &admin_signer, add).await;
    ok::<proto::AdminList>(&mut tap, &nc, &admin_signer, proto::AdminListRequest {}).await;
    ok::<proto::AuditTail>(&mut tap, &nc, &admin_signer, proto::AuditTailRequest { n: 20, before: None }).await;
    ok::<proto::AuditTail>(&mut tap, &nc, &admin_signer, proto::AuditTailRequest { n: 2, before: Some(5) }).await;
    ok::<proto::AuditVerify>(&mut tap, &nc, &admin_signer, proto::AuditVerifyRequest {}).await;
    ok::<proto::DashboardSession>(&mut tap, &nc, &admin_signer, proto::DashboardSessionRequest {}).await;

    // Enrollment and renewal, raw, as the service's own new key.
    let t = ok::<proto::TokenCreate>(
        &mut tap,
        &nc,
        &admin_signer,
        proto::TokenCreateRequest { identity: orders.clone(), ttl_secs: 900, count: 1 },
    )
    .await;
    let token = tillit::token::JoinToken::decode(t["tokens"][0].as_str().unwrap()).unwrap();
    let keys = tillit::client::enroll::LocalKeys::generate().unwrap();
    let boot = tillit::client::connect(&tillit::client::enroll::bootstrap_params(&token, vec![e.nats_url()]).unwrap()).await.unwrap();
    let new_signer = RequestSigner::new(keys.user.clone(), e.trust_domain.clone(), std::sync::Arc::new(tillit::clock::SystemClock));
    ok::<proto::Enroll>(&mut tap, &boot, &new_signer, keys.enroll_request(&token)).await;
    drop(boot);

    let svc_dir = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let svc = tillit::identity::load(&tillit::layout::IdentityDir::new(&svc_dir)).unwrap();
    let svc_nc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&svc, None).unwrap()).await.unwrap();
    let svc_signer = signer_of(&svc);
    let (csr, _key) = tillit::issuer::x509::make_csr(&svc.info.user_public_key).unwrap();
    ok::<proto::Renew>(&mut tap, &svc_nc, &svc_signer, proto::RenewRequest { csr }).await;

    // Permissions.
    let grant = proto::GrantRequest { service: orders.clone(), publish: vec!["shop.events.>".into()], subscribe: vec!["shop.events.>".into()] };
    ok::<proto::Grant>(&mut tap, &nc, &admin_signer, grant.clone()).await;
    ok::<proto::Grants>(&mut tap, &nc, &admin_signer, proto::ServiceRequest { service: orders.clone() }).await;
    ok::<proto::Ungrant>(&mut tap, &nc, &admin_signer, grant).await;
    ok::<proto::List>(&mut tap, &nc, &admin_signer, proto::ListRequest::default()).await;
    // One page of one: the reply carries the next page's cursor, which the schema describes.
    ok::<proto::List>(&mut tap, &nc, &admin_signer, proto::ListRequest { limit: Some(1), after: None }).await;

    // Secrets.
    let path = tillit::secrets::SecretPath::parse("acme/shop/prod/db-password").unwrap();
    let jwks = std::fs::read_to_string(e.dir.admin().trust_jwks()).unwrap();
    let sealed = tillit::client::secrets::seal_for_control_plane(&jwks, b"hunter2").unwrap();
    let put = proto::SecretPutRequest { path: path.clone(), readers: vec!["acme/shop/prod/orders".into()], value: sealed };
    ok::<proto::SecretPut>(&mut tap, &nc, &admin_signer, put).await;
    let rotate = proto::SecretRotateRequest { path: path.clone(), value: None, generate: Some(32) };
    ok::<proto::SecretRotate>(&mut tap, &nc, &admin_signer, rotate).await;
    ok::<proto::SecretList>(&mut tap, &nc, &admin_signer, proto::SecretListRequest::default()).await;
    ok::<proto::SecretVersions>(&mut tap, &nc, &admin_signer, proto::SecretPathRequest { path: path.clone() }).await;
    let readers = proto::SecretReadersRequest { path: path.clone(), readers: vec!["acme/shop/prod/*".into()] };
    ok::<proto::SecretReaders>(&mut tap, &nc, &admin_signer, readers).await;
    let mut grant_more = proto::GrantRequest { service: orders.clone(), publish: vec!["shop.audit.>".into()], subscribe: vec![] };
    ok::<proto::Grant>(&mut tap, &nc, &admin_signer, grant_more.clone()).await;
    ok::<proto::EstateExport>(&mut tap, &nc, &admin_signer, proto::EstateExportRequest {}).await;
    grant_more.subscribe.clear();
    ok::<proto::Ungrant>(&mut tap, &nc, &admin_signer, grant_more).await;
    ok::<proto::SecretGet>(&mut tap, &svc_nc, &svc_signer, proto::SecretGetRequest { name: "db-password".into(), version: None }).await;

    // Sites (added through the CLI: its request carries keys made where it runs).
    let (sys_user, leaf_tillit) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let (csr, _key) = tillit::issuer::x509::make_csr(&leaf_tillit.public_key()).unwrap();
    let west = proto::SiteAddRequest {
        name: "west".into(),
        listen: format!("127.0.0.1:{}", free_port()),
        hosts: vec![],
        csr,
        sys_user: sys_user.public_key(),
        tillit_user: leaf_tillit.public_key(),
        agent_token_ttl_secs: 900,
    };
    ok::<proto::SiteAdd>(&mut tap, &nc, &admin_signer, west).await;
    let site = site_add(&e, "east");
    ok::<proto::SiteList>(&mut tap, &nc, &admin_signer, proto::SiteListRequest::default()).await;

    // The site's agent: renew its site server's certificate, acknowledge an event.
    let agent_dir = e.tmp.path().join("east-agent");
    let out = enroll_cli(std::fs::read_to_string(site.agent_token()).unwrap().trim(), &agent_dir);
    assert!(out.status.success(), "agent enroll: {}", stderr(&out));
    let agent = tillit::client::session::Session::connect(&tillit::layout::IdentityDir::new(&agent_dir), Some(&e.nats_url())).await.unwrap();
    let agent_files = tillit::identity::load(&tillit::layout::IdentityDir::new(&agent_dir)).unwrap();
    let agent_signer = signer_of(&agent_files);
    let (_, leaf_seed) = tillit::issuer::creds::parse(&std::fs::read_to_string(site.dir.join("leaf-tillit.creds")).unwrap()).unwrap();
    let leaf_user = nkeys::KeyPair::from_seed(leaf_seed.expose()).unwrap();
    let (csr, _key) = tillit::issuer::x509::make_csr(&leaf_user.public_key()).unwrap();
    ok::<proto::SiteRenew>(&mut tap, &agent.client(), &agent_signer, proto::SiteRenewRequest { csr }).await;
    let first = wait_for(Duration::from_secs(10), || !events.lock().unwrap().is_empty()).map(|_| events.lock().unwrap()[0].1.clone());
    let first = first.expect("an event before the agent acknowledges one");
    let data = proto::AckData {
        site: "east".into(),
        outcome: proto::AckOutcome::Applied,
        seqs: vec![first["seq"].as_u64().unwrap()],
        event_ids: vec![first["id"].as_str().unwrap().to_string()],
        last_event_type: first["type"].as_str().map(str::to_string),
        error: None,
    };
    tap.add("agent ack envelope data", "agent-ack.json", serde_json::to_value(&data).unwrap());
    let envelope = agent
        .sign_envelope(tillit::subjects::ENVELOPE_AGENT_ACK, "site:east", &tillit::envelope::issuer(&e.trust_domain), 60, data)
        .unwrap();
    ok::<proto::Ack>(&mut tap, &agent.client(), &agent_signer, proto::AckRequest { envelope }).await;

    // Trust material.
    ok::<proto::RotateSigningKey>(&mut tap, &nc, &admin_signer, proto::RotateSigningKeyRequest { retire_after_secs: 3600 }).await;
    ok::<proto::RotateCa>(&mut tap, &nc, &admin_signer, proto::RotateCaRequest { finish: false }).await;
    ok::<proto::Status>(&mut tap, &nc, &admin_signer, proto::StatusRequest {}).await;
    let remove = proto::SiteRemoveRequest { name: "east".into(), reason: Some("test".into()) };
    ok::<proto::SiteRemove>(&mut tap, &nc, &admin_signer, remove).await;

    // Endings, and refusals (error.json).
    ok::<proto::SecretDelete>(&mut tap, &nc, &admin_signer, proto::SecretPathRequest { path }).await;
    let refused = call::<proto::SecretGet>(&mut tap, &svc_nc, &svc_signer, proto::SecretGetRequest { name: "db-password".into(), version: None }).await;
    assert!(refused.get("error").is_some(), "a deleted secret: {refused}");
    ok::<proto::Revoke>(&mut tap, &nc, &admin_signer, proto::RevokeRequest { service: orders.clone(), reason: Some("test".into()) }).await;
    let nobody = tillit::ServiceId::parse("acme/shop/prod/nobody").unwrap();
    let refused = call::<proto::Grants>(&mut tap, &nc, &admin_signer, proto::ServiceRequest { service: nobody }).await;
    assert_eq!(refused["error"]["code"], "not_found", "{refused}");

    // The micro service's own verbs.
    let mut micro = Vec::new();
    for (verb, schema) in [("PING", "micro/micro-ping-response.json"), ("INFO", "micro/micro-info-response.json"), ("STATS", "micro/micro-stats-response.json")] {
        let subject = format!("$SRV.{verb}.{}", tillit::subjects::SERVICE_NAME);
        let m = nc.request(subject.clone(), "".into()).await.unwrap_or_else(|err| panic!("{subject}: {err}"));
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        tap.add(subject.clone(), schema, v.clone());
        micro.push((subject, v));
    }

    // Every event the estate emitted on the way: one of each kind, each against its schema.
    let schemas = event_schemas();
    let all_seen = || {
        let got: std::collections::BTreeSet<String> = events.lock().unwrap().iter().map(|(_, b)| b["type"].as_str().unwrap_or_default().to_string()).collect();
        schemas.keys().all(|k| got.contains(k))
    };
    let _ = wait_for(Duration::from_secs(10), all_seen);
    let mut seen = BTreeMap::<String, usize>::new();
    for (subject, body) in events.lock().unwrap().iter() {
        let kind = body["type"].as_str().unwrap_or_default().to_string();
        let schema = schemas.get(&kind).unwrap_or_else(|| panic!("{subject}: event type {kind:?} is not in asyncapi's x-event-types"));
        tap.add(format!("event {kind} on {subject}"), schema, body.clone());
        *seen.entry(kind).or_default() += 1;
    }
    assert_eq!(seen.len(), schemas.len(), "every event kind was emitted and seen: {seen:?}");

    // Every verb of the endpoint table was driven and its reply checked: a new verb joins here.
    let replied: std::collections::BTreeSet<&str> =
        tap.cases.iter().filter_map(|c| c["what"].as_str().unwrap().strip_suffix(" reply")).collect();
    for spec in proto::ENDPOINTS {
        assert!(replied.contains(spec.subject), "{} is not driven by this test", spec.subject);
    }
    tap.check();
    for (subject, v) in micro {
        assert_eq!(v["metadata"]["trust_domain"], e.trust_domain.as_str(), "{subject}: {v}");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{subject}: {v}");
    }
}
