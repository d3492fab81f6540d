//! Admins with roles: the verb × role matrix and tenant confinement, driven against a real
//! control plane with real admin identities (each enrolled with its own key).

use crate::harness::*;
use std::path::{Path, PathBuf};

/// `tillit admin add NAME --role R [--tenant T …]` by `by`, then enroll it; its identity dir.
pub fn add_admin(e: &Estate, by: &str, name: &str, role: &str, tenants: &[&str]) -> PathBuf {
    let mut args = vec!["admin", "add", name, "--role", role, "--identity", by];
    for t in tenants {
        args.extend(["--tenant", t]);
    }
    let out = tillit(&args);
    assert!(out.status.success(), "admin add {name}: {}", stderr(&out));
    let dir = e.tmp.path().join(format!("admin-{name}"));
    let out = enroll_cli(stdout(&out).trim(), &dir);
    assert!(out.status.success(), "enroll {name}: {}", stderr(&out));
    dir
}

/// An admin's connection and signer, to send any verb with any body.
pub struct Raw {
    nc: async_nats::Client,
    signer: nkeys::KeyPair,
    td: String,
}

impl Raw {
    pub async fn connect(dir: &Path) -> Self {
        let files = tillit::identity::load(&tillit::layout::IdentityDir::new(dir)).unwrap();
        let nc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await.unwrap();
        let signer = nkeys::KeyPair::from_seed(files.user_seed.expose()).unwrap();
        Raw { nc, signer, td: files.info.trust_domain.clone() }
    }

    /// The reply's error code, or `None` when the verb answered with a result.
    pub async fn code(&self, subject: &str, body: serde_json::Value) -> Option<String> {
        let spec = tillit::proto::endpoint(subject).unwrap_or_else(|| panic!("no verb {subject}"));
        let now = tillit::clock::Clock::now_unix(&tillit::clock::SystemClock);
        let token = tillit::proto::sign_request(&self.signer, &self.td, spec.subject, spec.kind, body, now).unwrap();
        let r = self.nc.request(spec.subject, token.into()).await.expect("a reply");
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
        v["error"]["code"].as_str().map(str::to_string)
    }
}

/// One admin verb with a request that reaches tenant `t` (or no tenant), chosen to stop at the
/// handler's own checks when allowed (nothing in the estate changes), so only the role decides
/// whether the answer is `forbidden`.
fn request(subject: &str, t: &str) -> serde_json::Value {
    use serde_json::json;
    let svc = format!("{t}/shop/prod/orders");
    let path = format!("{t}/shop/prod/nope");
    match subject {
        "tillit.v1.admin.status" | "tillit.v1.admin.list" | "tillit.v1.admin.secret.list" | "tillit.v1.admin.site.list"
        | "tillit.v1.admin.audit.verify" | "tillit.v1.admin.admins.list" | "tillit.v1.admin.estate.export"
        | "tillit.v1.admin.dashboard.session" => json!({}),
        "tillit.v1.admin.secret.readers" => json!({ "path": path, "readers": [] }),
        "tillit.v1.admin.audit.tail" => json!({ "n": 1 }),
        "tillit.v1.admin.grants" => json!({ "service": svc }),
        "tillit.v1.admin.grant" | "tillit.v1.admin.ungrant" => json!({ "service": svc, "pub": [] }),
        "tillit.v1.admin.token.create" => json!({ "identity": svc, "ttl_secs": 1, "count": 1 }),
        "tillit.v1.admin.revoke" => json!({ "service": format!("{t}/shop/prod/nobody") }),
        "tillit.v1.admin.secret.put" => json!({ "path": path, "readers": [], "value": { "sealed": "", "sender_xkey": "" } }),
        "tillit.v1.admin.secret.rotate" => json!({ "path": path, "generate": 1 }),
        "tillit.v1.admin.secret.versions" | "tillit.v1.admin.secret.delete" => json!({ "path": path }),
        "tillit.v1.admin.site.add" => json!({ "name": "nope", "listen": "127.0.0.1:1", "csr": "", "sys_user": "", "tillit_user": "", "agent_token_ttl_secs": 1 }),
        "tillit.v1.admin.site.remove" => json!({ "name": "nope" }),
        "tillit.v1.admin.rotate.signing-key" => json!({ "retire_after_secs": 1 }),
        "tillit.v1.admin.rotate.ca" => json!({ "finish": true }),
        "tillit.v1.admin.admins.add" => json!({ "name": "zed", "role": "owner", "tenants": ["acme"], "ttl_secs": 600 }),
        other => panic!("the role test has no request for {other}: add one (and a row to ROLE_TABLE)"),
    }
}

/// The matrix as users read it in the README: verb, then whether owner / operator / auditor may
/// call it. Written out here on purpose: the product's table must agree with it.
const ROLE_TABLE: &[(&str, bool, bool, bool)] = &[
    ("tillit.v1.admin.status", true, true, true),
    ("tillit.v1.admin.list", true, true, true),
    ("tillit.v1.admin.grants", true, true, true),
    ("tillit.v1.admin.secret.list", true, true, true),
    ("tillit.v1.admin.secret.versions", true, true, true),
    ("tillit.v1.admin.site.list", true, true, true),
    ("tillit.v1.admin.token.create", true, true, false),
    ("tillit.v1.admin.grant", true, true, false),
    ("tillit.v1.admin.ungrant", true, true, false),
    ("tillit.v1.admin.revoke", true, true, false),
    ("tillit.v1.admin.secret.put", true, true, false),
    ("tillit.v1.admin.secret.rotate", true, true, false),
    ("tillit.v1.admin.secret.delete", true, true, false),
    ("tillit.v1.admin.site.add", true, true, false),
    ("tillit.v1.admin.site.remove", true, true, false),
    ("tillit.v1.admin.rotate.signing-key", true, true, false),
    ("tillit.v1.admin.rotate.ca", true, true, false),
    ("tillit.v1.admin.audit.tail", true, false, true),
    ("tillit.v1.admin.audit.verify", true, false, true),
    ("tillit.v1.admin.admins.list", true, false, true),
    ("tillit.v1.admin.admins.add", true, false, false),
    ("tillit.v1.admin.estate.export", true, true, true),
    ("tillit.v1.admin.dashboard.session", true, true, true),
    ("tillit.v1.admin.secret.readers", true, true, false),
];

/// Verbs an admin confined to tenants may not call at all (estate-wide changes, admins).
const ESTATE_WIDE: &[&str] = &[
    "tillit.v1.admin.site.add",
    "tillit.v1.admin.site.remove",
    "tillit.v1.admin.rotate.signing-key",
    "tillit.v1.admin.rotate.ca",
    "tillit.v1.admin.admins.list",
    "tillit.v1.admin.admins.add",
];

/// Verbs whose request names one tenant's thing.
const TENANT_VERBS: &[&str] = &[
    "tillit.v1.admin.grants",
    "tillit.v1.admin.secret.versions",
    "tillit.v1.admin.token.create",
    "tillit.v1.admin.grant",
    "tillit.v1.admin.ungrant",
    "tillit.v1.admin.revoke",
    "tillit.v1.admin.secret.put",
    "tillit.v1.admin.secret.rotate",
    "tillit.v1.admin.secret.delete",
    "tillit.v1.admin.secret.readers",
];

/// The table covers every admin verb, agrees with the product's matrix and with the README's.
#[test]
fn the_role_table_is_every_admin_verb_the_products_matrix_and_the_readmes() {
    use tillit::proto::{AdminRole, Caller, ENDPOINTS};
    let admin_verbs: Vec<&str> = ENDPOINTS.iter().filter(|e| e.caller == Caller::Admin).map(|e| e.subject).collect();
    let mut table: Vec<&str> = ROLE_TABLE.iter().map(|r| r.0).collect();
    table.sort();
    let mut verbs = admin_verbs.clone();
    verbs.sort();
    assert_eq!(table, verbs, "every admin verb has one row");
    for (s, o, p, a) in ROLE_TABLE {
        let roles = tillit::policy::roles::roles_for(s);
        assert_eq!((roles.contains(&AdminRole::Owner), roles.contains(&AdminRole::Operator), roles.contains(&AdminRole::Auditor)), (*o, *p, *a), "{s}");
    }
    // README: a row `| `verb` | ✓ | ✓ | – |` per verb, in the "Admins and roles" section.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (s, o, p, a) in ROLE_TABLE {
        let verb = s.trim_start_matches("tillit.v1.admin.");
        let mark = |b: &bool| if *b { "✓" } else { "–" };
        let row = format!("| `{verb}` | {} | {} | {} |", mark(o), mark(p), mark(a));
        assert!(readme.contains(&row), "README's role table lacks the row {row}");
    }
}

/// Every admin verb, called by an owner, an operator and an auditor (the whole estate), then by
/// an operator and an auditor confined to tenant `acme`, on `acme` and on `globex`: forbidden
/// exactly where the table says. Refusals are audited with the calling admin's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_verb_answers_each_role_as_the_table_says() {
    let e = Estate::init("roles.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let owner = e.admin();
    let op = add_admin(&e, &owner, "op", "operator", &[]);
    let aud = add_admin(&e, &owner, "aud", "auditor", &[]);
    let acme_op = add_admin(&e, &owner, "acme-op", "operator", &["acme"]);
    let acme_aud = add_admin(&e, &owner, "acme-aud", "auditor", &["acme"]);
    let who = [
        ("owner", Raw::connect(Path::new(&owner)).await, None),
        ("operator", Raw::connect(&op).await, None),
        ("auditor", Raw::connect(&aud).await, None),
        ("operator", Raw::connect(&acme_op).await, Some("acme")),
        ("auditor", Raw::connect(&acme_aud).await, Some("acme")),
    ];
    let mut checked = 0;
    for (subject, o, p, a) in ROLE_TABLE {
        for (role, raw, confined) in &who {
            let by_role = match *role {
                "owner" => *o,
                "operator" => *p,
                _ => *a,
            };
            for tenant in ["acme", "globex"] {
                let allowed = by_role
                    && match confined {
                        None => true,
                        Some(t) => !ESTATE_WIDE.contains(subject) && (!TENANT_VERBS.contains(subject) || *t == tenant),
                    };
                let code = raw.code(subject, request(subject, tenant)).await;
                let forbidden = code.as_deref() == Some("forbidden");
                assert_eq!(!forbidden, allowed, "{role} (confined to {confined:?}) on {subject} for {tenant}: {code:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, ROLE_TABLE.len() * 5 * 2);
    // Refusals are in the audit log, by the admin who was refused.
    let audit = stdout(&tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "400"]));
    assert!(
        audit.lines().any(|l| l.contains("spiffe://roles.example/tillit/admin/aud") && l.contains("denied:forbidden") && l.contains("\"action\":\"grant\"")),
        "an auditor's refused grant is not audited"
    );
    assert!(audit.lines().any(|l| l.contains("\"action\":\"admins.add\"") && l.contains("\"role\":\"auditor\"")), "admins.add is audited with the role");
}

/// A tenant-confined admin sees only its tenants: in `list`, `status`, `secret list`, the audit
/// tail; an unconfined auditor reads everything but changes nothing; the last owner stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confined_admins_see_only_their_tenants_and_the_last_owner_stays() {
    let e = Estate::init("scoped.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let owner = e.admin();
    enroll_one(&e, "acme/shop/prod/orders", "orders");
    enroll_one(&e, "globex/web/prod/api", "api");
    assert!(secret_put(&e, "acme/shop/prod/db", "s3cret-a", &["acme/shop/prod/orders"]).status.success());
    assert!(secret_put(&e, "globex/web/prod/db", "s3cret-g", &["globex/web/prod/api"]).status.success());
    let acme_aud = add_admin(&e, &owner, "acme-aud", "auditor", &["acme"]);
    let acme = acme_aud.to_str().unwrap();

    let list = stdout(&tillit(&["list", "--identity", acme, "--json"]));
    assert!(list.contains("acme/shop/prod/orders") && !list.contains("globex"), "{list}");
    assert!(!list.contains("tillit/admin"), "a confined admin sees no admins: {list}");
    let status: serde_json::Value = serde_json::from_str(&stdout(&tillit(&["status", "--identity", acme, "--json"]))).unwrap();
    assert_eq!(status["counts"]["identities"], 1, "{status}");
    let accounts: Vec<&String> = status["accounts"].as_object().unwrap().keys().collect();
    assert_eq!(accounts, ["acme-prod"], "{status}");
    assert_eq!((status["caller_role"].as_str(), status["caller_tenants"].clone()), (Some("auditor"), serde_json::json!(["acme"])), "{status}");
    let secrets = stdout(&tillit(&["secret", "list", "--identity", acme, "--json"]));
    assert!(secrets.contains("acme/shop/prod/db") && !secrets.contains("globex") && !secrets.contains("s3cret"), "{secrets}");
    let tail = stdout(&tillit(&["audit", "tail", "--identity", acme, "--json", "-n", "100"]));
    assert!(tail.contains("acme/shop/prod") && !tail.contains("globex"), "{tail}");
    assert!(!tail.contains("\"redo\""), "store changes never leave the control plane: {tail}");
    let out = tillit(&["grants", "--identity", acme, "globex/web/prod/api"]);
    assert!(!out.status.success() && stderr(&out).contains("outside this admin's tenants"), "{}", stderr(&out));
    let mine = stdout(&tillit(&["audit", "tail", "--identity", acme, "--json", "-n", "5"]));
    assert!(mine.lines().any(|l| l.contains("denied:forbidden") && l.contains("tillit/admin/acme-aud")), "a confined admin sees its own refusals: {mine}");
    // Another admin refused on acme's things: acme's auditor sees it (the record names the
    // tenant); the same admin refused on globex's: it does not.
    let other = add_admin(&e, &owner, "other-aud", "auditor", &[]);
    let other = other.to_str().unwrap();
    assert!(!tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.x", "--identity", other]).status.success());
    assert!(!tillit(&["grant", "globex/web/prod/api", "--pub", "web.x", "--identity", other]).status.success());
    let seen = stdout(&tillit(&["audit", "tail", "--identity", acme, "--json", "-n", "20"]));
    let refusals: Vec<&str> = seen.lines().filter(|l| l.contains("tillit/admin/other-aud") && l.contains("denied:forbidden")).collect();
    assert_eq!(refusals.len(), 1, "{seen}");
    assert!(refusals[0].contains("\"tenant\":\"acme\""), "{seen}");
    let owner_view = stdout(&tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "100"]));
    assert!(
        owner_view.lines().any(|l| l.contains("\"action\":\"list\"") && l.contains("spiffe://scoped.example/tillit/admin/acme-aud")),
        "an admin's read is not audited:\n{owner_view}"
    );
    let out = tillit(&["audit", "verify", "--identity", acme]);
    assert!(out.status.success() && stdout(&out).contains("audit chain ok"), "{}{}", stdout(&out), stderr(&out));

    // Admins: listed for owners with their roles; the last owner cannot go; owners only add.
    let admins = stdout(&tillit(&["admin", "list", "--identity", &owner, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&admins).unwrap();
    let find = |n: &str| v["admins"].as_array().unwrap().iter().find(|a| a["name"] == n).cloned().unwrap();
    assert_eq!(find("admin")["role"], "owner", "the init admin is the first owner");
    assert_eq!(find("acme-aud")["role"], "auditor");
    assert_eq!(find("acme-aud")["tenants"], serde_json::json!(["acme"]));
    let out = tillit(&["admin", "revoke", "admin", "--identity", &owner]);
    assert!(!out.status.success() && stderr(&out).contains("last live owner"), "{}", stderr(&out));
    let out = tillit(&["admin", "revoke", "acme-aud", "--reason", "rotation", "--identity", &owner]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!tillit(&["list", "--identity", acme]).status.success(), "a revoked auditor still reads");
    let out = tillit(&["admin", "add", "x", "--role", "owner", "--tenant", "acme", "--identity", &owner]);
    assert!(!out.status.success() && stderr(&out).contains("never confined"), "{}", stderr(&out));
}
