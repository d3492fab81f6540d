//! The estate as code: `tillit export` and `tillit apply -f estate.toml [--plan]` against a real
//! control plane: a stable round trip, a plan that changes nothing, exactly the planned change,
//! idempotence, a stale plan refused, tenant confinement, every step audited.

use crate::harness::*;
use crate::roles::add_admin;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn revision(e: &Estate) -> String {
    json_of(&tillit(&["export", "--identity", &e.admin(), "--json"]))["revision"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_apply_makes_exactly_the_planned_change_and_refuses_a_stale_plan() {
    let (e, _leaf) = Estate::init_with_leaf("code.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let owner = e.admin();
    enroll_one(&e, "acme/shop/prod/orders", "orders");
    enroll_one(&e, "globex/web/prod/api", "api");
    assert!(tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.events.>", "--identity", &owner]).status.success());
    assert!(secret_put(&e, "acme/shop/prod/db", "s3cret", &["acme/shop/prod/orders"]).status.success());

    // Export: the live estate as TOML; applying it plans nothing (a stable round trip).
    let live = e.tmp.path().join("live.toml");
    let out = tillit(&["export", "--identity", &owner, "-o", live.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&live).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(doc["tenants"].as_array().unwrap().len(), 2, "{text}");
    assert_eq!(doc["manage_sites"].as_bool(), Some(true), "{text}");
    assert_eq!(doc["service"][0]["id"].as_str(), Some("acme/shop/prod/orders"), "{text}");
    assert_eq!(doc["service"][0]["pub"][0].as_str(), Some("shop.events.>"), "{text}");
    assert_eq!(doc["secret"][0]["readers"][0].as_str(), Some("acme/shop/prod/orders"), "{text}");
    assert!(!text.contains("s3cret"), "a value in the export: {text}");
    let out = tillit(&["apply", "-f", live.to_str().unwrap(), "--plan", "--identity", &owner]);
    assert!(out.status.success() && stdout(&out).contains("no changes"), "{}{}", stdout(&out), stderr(&out));

    // A desired estate: more grants, other readers, a new site.
    let site_port = free_port();
    let desired = e.tmp.path().join("desired.toml");
    let want = format!(
        r#"version = 1
tenants = ["acme", "globex"]
manage_sites = true

[[service]]
id = "acme/shop/prod/orders"
pub = ["shop.events.>", "shop.audit.>"]
sub = []

[[service]]
id = "globex/web/prod/api"
sub = ["web.in.>"]

[[secret]]
path = "acme/shop/prod/db"
readers = ["acme/shop/prod/*"]

[[site]]
name = "east"
listen = "127.0.0.1:{site_port}"
"#
    );
    std::fs::write(&desired, want).unwrap();
    let before = revision(&e);
    let saved = e.tmp.path().join("plan.json");
    let v = json_of(&tillit(&["apply", "-f", desired.to_str().unwrap(), "--plan", "--save-plan", saved.to_str().unwrap(), "--identity", &owner, "--json"]));
    let ops: Vec<String> = v["plan"]["steps"].as_array().unwrap().iter().map(|s| format!("{} {}", s["op"].as_str().unwrap(), s)).collect();
    assert_eq!(ops.len(), 4, "{ops:#?}");
    assert!(ops[0].starts_with("grant") && ops[0].contains("shop.audit.>"), "{ops:#?}");
    assert!(ops[1].starts_with("grant") && ops[1].contains("web.in.>"), "{ops:#?}");
    assert!(ops[2].starts_with("readers") && ops[2].contains("acme/shop/prod/*"), "{ops:#?}");
    assert!(ops[3].starts_with("add_site") && ops[3].contains("east"), "{ops:#?}");
    assert_eq!(v["revision"], before.as_str());
    assert_eq!(revision(&e), before, "--plan changed the estate");

    // Someone else changes the estate: the saved plan is stale and refused, nothing applied.
    assert!(tillit(&["grant", "globex/web/prod/api", "--pub", "web.out.>", "--identity", &owner]).status.success());
    let out = tillit(&["apply", "--plan-file", saved.to_str().unwrap(), "--identity", &owner]);
    assert!(!out.status.success() && stderr(&out).contains("changed since this plan was made"), "{}{}", stdout(&out), stderr(&out));
    let grants = stdout(&tillit(&["grants", "acme/shop/prod/orders", "--identity", &owner, "--json"]));
    assert!(!grants.contains("shop.audit.>"), "a stale plan was applied: {grants}");
    let out = tillit(&["apply", "-f", desired.to_str().unwrap(), "--expect-revision", &before, "--identity", &owner]);
    assert!(!out.status.success() && stderr(&out).contains("changed since"), "{}", stderr(&out));

    // Apply: exactly the change (the other admin's web.out.> is taken back: the document rules).
    let sites = e.tmp.path().join("sites");
    let out = tillit(&["apply", "-f", desired.to_str().unwrap(), "--sites-dir", sites.to_str().unwrap(), "--identity", &owner]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("applied 5 change(s)"), "{}", stdout(&out));
    assert!(sites.join("east").join("server.conf").is_file(), "the new site's directory");
    let grants = stdout(&tillit(&["grants", "globex/web/prod/api", "--identity", &owner, "--json"]));
    assert!(grants.contains("web.in.>") && !grants.contains("web.out.>"), "{grants}");
    let readers = stdout(&tillit(&["secret", "versions", "acme/shop/prod/db", "--identity", &owner, "--json"]));
    assert!(readers.contains("acme/shop/prod/*"), "{readers}");
    // Idempotent: again, nothing to do.
    let out = tillit(&["apply", "-f", desired.to_str().unwrap(), "--sites-dir", sites.to_str().unwrap(), "--identity", &owner]);
    assert!(out.status.success() && stdout(&out).contains("applied 0 change(s)"), "{}{}", stdout(&out), stderr(&out));
    // The export of the result is the document (a stable round trip).
    let after = e.tmp.path().join("after.toml");
    assert!(tillit(&["export", "--identity", &owner, "-o", after.to_str().unwrap()]).status.success());
    let out = tillit(&["apply", "-f", after.to_str().unwrap(), "--plan", "--identity", &owner]);
    assert!(stdout(&out).contains("no changes"), "{}", stdout(&out));
    let a: toml::Value = toml::from_str(&std::fs::read_to_string(&after).unwrap()).unwrap();
    let d: toml::Value = toml::from_str(&std::fs::read_to_string(&desired).unwrap()).unwrap();
    assert_eq!(a["service"].as_array().unwrap().len(), d["service"].as_array().unwrap().len());

    // Every step is audited with the calling admin's identity.
    let audit = stdout(&tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "60"]));
    let by_owner = |action: &str| audit.lines().any(|l| l.contains(&format!("\"action\":\"{action}\"")) && l.contains("spiffe://code.example/tillit/admin/admin"));
    for action in ["grant", "ungrant", "secret.readers", "site.add"] {
        assert!(by_owner(action), "{action} not audited as the owner:\n{audit}");
    }

    // Removing from the document removes from the estate: the site goes, api's grants go.
    let smaller = e.tmp.path().join("smaller.toml");
    std::fs::write(
        &smaller,
        "version = 1\ntenants = [\"acme\", \"globex\"]\nmanage_sites = true\n\n[[service]]\nid = \"acme/shop/prod/orders\"\npub = [\"shop.events.>\", \"shop.audit.>\"]\n\n[[secret]]\npath = \"acme/shop/prod/db\"\nreaders = [\"acme/shop/prod/*\"]\n",
    )
    .unwrap();
    let out = tillit(&["apply", "-f", smaller.to_str().unwrap(), "--plan", "--identity", &owner]);
    let plan = stdout(&out);
    assert!(plan.contains("- ungrant  globex/web/prod/api") && plan.contains("- site     east"), "{plan}");
    let out = tillit(&["apply", "-f", smaller.to_str().unwrap(), "--identity", &owner]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let sites_now = stdout(&tillit(&["site", "list", "--identity", &owner, "--json"]));
    assert!(!sites_now.contains("\"east\""), "{sites_now}");

    // What cannot be done is refused as a whole: a secret with no value, nothing changes.
    let bad = e.tmp.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\ntenants = [\"acme\"]\n\n[[service]]\nid = \"acme/shop/prod/orders\"\npub = [\"x.y\"]\n\n[[secret]]\npath = \"acme/shop/prod/new\"\nreaders = [\"acme/shop/prod/orders\"]\n").unwrap();
    let rev = revision(&e);
    let out = tillit(&["apply", "-f", bad.to_str().unwrap(), "--identity", &owner]);
    assert!(!out.status.success() && stdout(&out).contains("store its value first"), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(revision(&e), rev, "a refused document changed the estate");

    // A tenant-confined operator: its export is its tenant; another tenant is refused.
    let acme_op = add_admin(&e, &owner, "acme-op", "operator", &["acme"]);
    let acme = acme_op.to_str().unwrap();
    let v = json_of(&tillit(&["export", "--identity", acme, "--json"]));
    assert_eq!(v["document"]["tenants"], serde_json::json!(["acme"]), "{v}");
    assert_eq!(v["document"]["manage_sites"], false, "{v}");
    assert!(!v.to_string().contains("globex"), "{v}");
    let other = e.tmp.path().join("other.toml");
    std::fs::write(&other, "version = 1\ntenants = [\"globex\"]\n\n[[service]]\nid = \"globex/web/prod/api\"\npub = [\"web.x\"]\n").unwrap();
    let out = tillit(&["apply", "-f", other.to_str().unwrap(), "--identity", acme]);
    assert!(!out.status.success() && stdout(&out).contains("outside this admin's tenants"), "{}{}", stdout(&out), stderr(&out));
    // An auditor may plan (read) but not apply.
    let aud = add_admin(&e, &owner, "aud", "auditor", &[]);
    let out = tillit(&["apply", "-f", desired.to_str().unwrap(), "--plan", "--identity", aud.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tillit(&["apply", "-f", desired.to_str().unwrap(), "--sites-dir", sites.to_str().unwrap(), "--identity", aud.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("auditor admins may not call"), "{}{}", stdout(&out), stderr(&out));
}
