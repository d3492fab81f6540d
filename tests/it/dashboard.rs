//! The dashboard in a real browser: Debian's headless Chromium, driven by Selenium and
//! chromedriver from `tests/it/fixtures/dashboard.py` (one JSON command per line), against a
//! real estate with a site and an agent. The page stays open while the estate changes, so the
//! live update (server-sent events, no reload) is what is checked; a tenant-confined auditor
//! sees its tenant only; the session rules are checked over plain HTTP. `.ci/run` installs
//! chromium, chromium-driver and selenium; a machine without them fails this test, saying so
//! (`TILLIT_CHROMIUM` and `TILLIT_CHROMEDRIVER` point at other binaries).

use crate::harness::*;
use crate::roles::add_admin;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The browser driver: `python3 tests/it/fixtures/dashboard.py`, spoken to in JSON lines.
struct Browser {
    child: Child,
    /// Closed on drop: the driver then quits its browsers and removes their profiles.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/dashboard.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install python3, chromium, chromium-driver and selenium==4.27.1 (.ci/run does)"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut b = Browser { child, stdin, stdout };
        let hello = b.read().unwrap_or_else(|e| panic!("the browser driver cannot run: {e}"));
        assert!(hello["value"]["selenium"].is_string(), "{hello}");
        b
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("the browser driver exited (its stderr is above)".into());
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }

    /// One command; its value, or what went wrong.
    fn call(&mut self, c: Value) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().ok_or("the browser driver's input is closed")?;
        writeln!(stdin, "{c}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        self.read().map(|v| v["value"].clone()).map_err(|e| format!("{c}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of input ends the driver, which quits its browsers (and their chromedriver); a
        // driver that hangs is killed.
        drop(self.stdin.take());
        if exited_within(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `tillit dashboard --identity ID`: the one-time URL.
fn dashboard_url(e: &Estate, identity: &str) -> String {
    let out = tillit(&["dashboard", "--identity", identity]);
    assert!(out.status.success(), "dashboard: {}", stderr(&out));
    let url = stdout(&out).trim().to_string();
    let want = format!("http://127.0.0.1:{}/dashboard/login?code=", e.http_port);
    assert!(url.starts_with(&want) && url.len() > want.len() + 20 && !url.contains('\n'), "{url}");
    url
}

/// `tillit status --json` as `identity`.
fn status(identity: &str) -> Value {
    let out = tillit(&["status", "--identity", identity, "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn site_status(e: &Estate, name: &str) -> Value {
    status(&e.admin())["sites"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap_or(Value::Null)
}

/// The whole page's text, hidden elements included, and its DOM as markup (attributes too).
fn page_text(b: &mut Browser, browser: &str) -> String {
    let text = b.call(json!({ "cmd": "js", "browser": browser, "script": "return document.documentElement.textContent" })).unwrap();
    let dom = b.call(json!({ "cmd": "js", "browser": browser, "script": "return document.documentElement.outerHTML" })).unwrap();
    format!("{}\n{}", text.as_str().unwrap(), dom.as_str().unwrap())
}

/// Connect to the hub with the admin's certificate and no credentials: nats-server refuses it.
fn refused_connection(e: &Estate) {
    let admin = tillit::identity::load(&tillit::layout::IdentityDir::new(e.admin())).unwrap();
    let cert = tillit::client::tls::certified_key(&admin.cert_pem, admin.key_pem.expose()).unwrap();
    let tls = tillit::client::tls::client_config(&admin.ca_pem, tillit::client::tls::SwappableCert::new(cert)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refused = rt.block_on(async {
        let c = async_nats::ConnectOptions::new().require_tls(true).tls_client_config(tls).connection_timeout(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(10), c.connect(e.nats_url())).await
    });
    assert!(matches!(refused, Ok(Err(_))), "the hub took a connection without credentials");
}

#[test]
fn the_dashboard_renders_the_estate_live_in_a_real_browser_and_confines_sessions() {
    // First, so a machine without the browser fails at once, saying what to install.
    let mut b = Browser::start();
    let (e, _leaf) = Estate::init_with_leaf("dash.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let owner = e.admin();
    for (svc, dir) in [
        ("acme/shop/prod/orders", "acme-orders"),
        ("acme/shop/staging/orders", "acme-orders-staging"),
        ("globex/web/prod/api", "globex-api"),
        ("globex/web/prod/worker", "globex-worker"),
    ] {
        enroll_one(&e, svc, dir);
    }
    let out = tillit(&["revoke", "globex/web/prod/worker", "--reason", "decommissioned", "--identity", &owner]);
    assert!(out.status.success(), "revoke: {}", stderr(&out));
    // A refusal for the refusals table: an auditor may not mint join tokens.
    let aud = add_admin(&e, &owner, "acme-aud", "auditor", &["acme"]);
    let aud = aud.to_str().unwrap();
    let out = tillit(&["token", "create", "--tenant", "acme", "--project", "shop", "--env", "prod", "--service", "orders", "--identity", aud]);
    assert!(!out.status.success(), "an auditor minted a token");
    // A real refusal at the hub for the auth failures table: the admin's certificate, no JWT.
    refused_connection(&e);
    let east = site_add(&e, "east");
    let east_srv = east.start();
    let out = secret_put(&e, "acme/shop/prod/db", "v1", &["site:east"]);
    assert!(out.status.success(), "secret put: {}", stderr(&out));
    let ident = e.tmp.path().join("east-agent");
    let files = e.tmp.path().join("east-files");
    let mut agent = AgentProc::start(&east, &ident, &files, &east.url(), None);
    let l = |a: &AgentProc| format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), a.log_text(), east_srv.log_text());
    wait_for(Duration::from_secs(30), || {
        let s = site_status(&e, "east");
        s["agents"] == 1 && s["lag_events"] == 0 && s["last_ack_unix"].is_i64()
    })
    .unwrap_or_else(|| panic!("the agent never acked: {}\n{}", site_status(&e, "east"), l(&agent)));

    // === the owner's page ===
    let url = dashboard_url(&e, &owner);
    let landed = b.call(json!({ "cmd": "open", "url": url })).unwrap();
    assert_eq!(landed, format!("http://127.0.0.1:{}/dashboard/", e.http_port), "the login redirects to the page (the code leaves the address bar)");
    let st = status(&owner);
    let c = &st["counts"];
    for (id, want) in [("count-total", &c["identities"]), ("count-active", &c["active"]), ("count-revoked", &c["revoked"]), ("count-expired", &c["expired"])] {
        let got = b.call(json!({ "cmd": "wait", "css": format!("#{id}"), "equals": want.to_string(), "timeout": 15 }));
        got.unwrap_or_else(|err| panic!("{err}\nstatus says {c}\n{}", l(&agent)));
    }
    assert_eq!(c["revoked"], 1, "{c}");
    assert_eq!(b.call(json!({ "cmd": "text", "css": "#admin-name" })).unwrap(), "admin");
    assert_eq!(b.call(json!({ "cmd": "text", "css": "#admin-role" })).unwrap(), "owner");
    assert_eq!(b.call(json!({ "cmd": "text", "css": "#trust-domain" })).unwrap(), "dash.example");
    b.call(json!({ "cmd": "wait", "css": "#live-label", "equals": "live", "timeout": 10 })).unwrap();
    assert!(b.call(json!({ "cmd": "text", "css": "#live-time" })).unwrap().as_str().unwrap().starts_with("updated "));
    // The identities table: every identity, then the filters.
    let total = c["identities"].as_u64().unwrap();
    assert_eq!(b.call(json!({ "cmd": "count", "css": "#identities-body tr" })).unwrap(), total);
    for id in ["acme/shop/prod/orders", "globex/web/prod/api", "globex/web/prod/worker"] {
        let css = format!("#identities-body tr[data-id=\"spiffe://dash.example/{id}\"]");
        assert_eq!(b.call(json!({ "cmd": "count", "css": css })).unwrap(), 1, "{id}");
    }
    assert_eq!(
        b.call(json!({ "cmd": "text", "css": "tr[data-id=\"spiffe://dash.example/globex/web/prod/worker\"] .badge" })).unwrap(),
        "revoked"
    );
    b.call(json!({ "cmd": "select", "css": "#filter-tenant", "value": "acme" })).unwrap();
    assert_eq!(b.call(json!({ "cmd": "count", "css": "#identities-body tr" })).unwrap(), 2);
    assert_eq!(b.call(json!({ "cmd": "count", "css": "#identities-body tr[data-tenant=\"acme\"]" })).unwrap(), 2);
    b.call(json!({ "cmd": "select", "css": "#filter-env", "value": "staging" })).unwrap();
    assert_eq!(b.call(json!({ "cmd": "texts", "css": "#identities-body tr td:first-child" })).unwrap(), json!(["acme/shop/staging/orders"]), "ids are shown without spiffe://<trust domain>/");
    b.call(json!({ "cmd": "select", "css": "#filter-env", "value": "" })).unwrap();
    // The site, its certificate from the current CA; the signing key; the audit tail.
    let site = "tr[data-site=\"east\"]";
    b.call(json!({ "cmd": "wait", "css": format!("{site} .agents"), "equals": "1", "timeout": 20 })).unwrap();
    b.call(json!({ "cmd": "wait", "css": format!("{site} .lag"), "equals": "0", "timeout": 20 })).unwrap();
    assert_eq!(b.call(json!({ "cmd": "text", "css": format!("{site} .cert") })).unwrap(), "current CA");
    let applied: u64 = b.call(json!({ "cmd": "text", "css": format!("{site} .applied") })).unwrap().as_str().unwrap().parse().unwrap();
    assert!(applied > 0, "the agent applied the secret's event");
    assert_eq!(b.call(json!({ "cmd": "count", "css": "#signing-keys tr[data-state=\"current\"]" })).unwrap(), 1);
    let audit = b.call(json!({ "cmd": "texts", "css": "#audit-body td.action" })).unwrap();
    for action in ["revoke", "site.add", "dashboard.login"] {
        assert!(audit.as_array().unwrap().iter().any(|a| a == action), "{action} in the audit tail: {audit}");
    }
    b.call(json!({ "cmd": "wait", "css": "#auth-failures-body td.action", "equals": "connect", "timeout": 10 })).unwrap();
    let actor = b.call(json!({ "cmd": "text", "css": "#auth-failures-body td.actor" })).unwrap();
    assert!(actor.as_str().unwrap().starts_with("nats-server:"), "{actor}");
    let refused = b.call(json!({ "cmd": "texts", "css": "#refusals-body td.action" })).unwrap();
    assert!(refused.as_array().unwrap().iter().any(|a| a == "token.create"), "the auditor's refusal: {refused}");

    // === live: the agent stops, a rotation is published, the SAME page shows the lag ===
    b.call(json!({ "cmd": "js", "script": "window.tillitNoReload = 'same page'; return true" })).unwrap();
    agent.kill();
    let out = tillit(&["rotate", "signing-key", "--retire-after", "1h", "--identity", &owner]);
    assert!(out.status.success(), "rotate: {}", stderr(&out));
    b.call(json!({ "cmd": "wait", "css": format!("{site} .lag"), "at_least": 1, "timeout": 20 }))
        .unwrap_or_else(|err| panic!("{err}\nstatus: {}\n{}", site_status(&e, "east"), l(&agent)));
    b.call(json!({ "cmd": "wait", "css": "#signing-keys tr[data-state=\"previous\"] td:nth-child(2)", "equals": "previous", "timeout": 10 })).unwrap();
    assert_eq!(b.call(json!({ "cmd": "js", "script": "return window.tillitNoReload" })).unwrap(), "same page", "no reload");
    assert_eq!(b.call(json!({ "cmd": "attr", "css": "#filter-tenant", "name": "value" })).unwrap(), "acme", "the filter survives re-renders");
    assert_eq!(b.call(json!({ "cmd": "count", "css": "#identities-body tr" })).unwrap(), 2);
    let agent = AgentProc::start(&east, &ident, &files, &east.url(), None);
    b.call(json!({ "cmd": "wait", "css": format!("{site} .lag"), "equals": "0", "timeout": 30 }))
        .unwrap_or_else(|err| panic!("{err}\nstatus: {}\n{}", site_status(&e, "east"), l(&agent)));
    assert_eq!(b.call(json!({ "cmd": "js", "script": "return window.tillitNoReload" })).unwrap(), "same page", "no reload");
    let renders: u64 = b.call(json!({ "cmd": "attr", "css": "#app", "name": "data-renders" })).unwrap().as_str().unwrap().parse().unwrap();
    assert!(renders >= 3, "re-rendered from events: {renders}");
    // Nothing the page did broke its CSP or threw.
    let logs = b.call(json!({ "cmd": "logs" })).unwrap();
    assert!(
        !logs.as_array().unwrap().iter().any(|m| m.as_str().is_some_and(|m| m.contains("Content Security Policy") || m.contains("Uncaught"))),
        "console: {logs}"
    );
    b.call(json!({ "cmd": "select", "css": "#filter-tenant", "value": "" })).unwrap();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    assert_eq!(b.call(json!({ "cmd": "screenshot", "path": shot.to_str().unwrap() })).unwrap(), true);
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "{}", shot.display());
    let dark = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-dark.png");
    assert_eq!(b.call(json!({ "cmd": "screenshot", "path": dark.to_str().unwrap(), "dark": true })).unwrap(), true);

    // === the session, over plain HTTP ===
    let cookie = b.call(json!({ "cmd": "cookie", "name": "tillit_dashboard" })).unwrap();
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/dashboard", "{cookie}");
    let owner_cookie = format!("tillit_dashboard={}", cookie["value"].as_str().unwrap());
    let ok = http_get_with(e.http_port, "/dashboard/api/state", &[("Cookie", &owner_cookie)]).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.header("content-security-policy").unwrap().contains("script-src 'self'"));
    // The page: hardened headers, and nothing inline the CSP would have to allow.
    let page = http_get_with(e.http_port, "/dashboard/", &[("Cookie", &owner_cookie)]).unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert!(!page.body.contains("<script>") && !page.body.contains("<style") && !page.body.contains("style="), "{}", page.body);
    let js = http_get_with(e.http_port, "/dashboard/app.js", &[("Cookie", &owner_cookie)]).unwrap();
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(js.body.contains("EventSource") && !js.body.contains(".innerHTML") && !js.body.contains("insertAdjacentHTML"), "data goes in as text");
    for bad in ["/dashboard/login?code=not-a-code", "/dashboard/login?code=", "/dashboard/login"] {
        let a = http_get_with(e.http_port, bad, &[]).unwrap();
        assert!(a.status == 403 || a.status == 400, "{bad}: {} {}", a.status, a.body);
        assert!(a.header("set-cookie").is_none(), "{bad}");
    }
    let path = url.split_once(&format!(":{}", e.http_port)).unwrap().1;
    let again = http_get(e.http_port, path).unwrap();
    assert_eq!(again.0, 403, "a one-time URL works once: {}", again.1);
    for p in ["/dashboard/", "/dashboard/api/state", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/api/events"] {
        for headers in [vec![], vec![("Cookie", "tillit_dashboard=garbage")], vec![("Cookie", "other=1")]] {
            let a = http_get_with(e.http_port, p, &headers).unwrap();
            assert_eq!(a.status, 401, "{p} {headers:?}: {}", a.body);
            assert!(!a.body.contains("dash.example") && !a.body.contains("acme") && !a.body.contains("EventSource"), "{p}: {}", a.body);
        }
    }
    b.call(json!({ "cmd": "close" })).unwrap();

    // === a tenant-confined auditor, in a fresh browser ===
    let aud_status = status(aud);
    let url = dashboard_url(&e, aud);
    b.call(json!({ "cmd": "open", "browser": "aud", "url": url })).unwrap();
    b.call(json!({ "cmd": "wait", "browser": "aud", "css": "#admin-role", "equals": "auditor", "timeout": 15 })).unwrap();
    b.call(json!({ "cmd": "wait", "browser": "aud", "css": "#live-label", "equals": "live", "timeout": 10 })).unwrap();
    assert_eq!(b.call(json!({ "cmd": "text", "browser": "aud", "css": "#admin-name" })).unwrap(), "acme-aud");
    assert_eq!(b.call(json!({ "cmd": "text", "browser": "aud", "css": "#admin-tenants" })).unwrap(), "tenants: acme");
    let c = &aud_status["counts"];
    assert_eq!(b.call(json!({ "cmd": "text", "browser": "aud", "css": "#count-total" })).unwrap(), c["identities"].to_string(), "{c}");
    let ids = b.call(json!({ "cmd": "texts", "browser": "aud", "css": "#identities-body tr td:first-child" })).unwrap();
    let ids: Vec<&str> = ids.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(ids.contains(&"acme/shop/prod/orders") && ids.contains(&"acme/shop/staging/orders"), "{ids:?}");
    let text = page_text(&mut b, "aud");
    assert!(!text.contains("globex"), "the acme auditor sees nothing of globex:\n{text}");
    assert_eq!(b.call(json!({ "cmd": "count", "browser": "aud", "css": "#sites-body tr" })).unwrap(), 0, "no sites for a confined admin");
    assert!(!text.contains("data-site="), "no site rows:\n{text}");
    assert_eq!(b.call(json!({ "cmd": "count", "browser": "aud", "css": "#auth-failures-body tr" })).unwrap(), 0, "hub refusals belong to no tenant");
    let msg = b.call(json!({ "cmd": "text", "browser": "aud", "css": "#sites-empty" })).unwrap();
    assert!(msg.as_str().unwrap().contains("estate-wide"), "{msg}");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-auditor.png");
    assert_eq!(b.call(json!({ "cmd": "screenshot", "browser": "aud", "path": shot.to_str().unwrap() })).unwrap(), true);
    // Revoked: its session ends at the next request, and the open page says so.
    let cookie = b.call(json!({ "cmd": "cookie", "browser": "aud", "name": "tillit_dashboard" })).unwrap();
    let aud_cookie = format!("tillit_dashboard={}", cookie["value"].as_str().unwrap());
    assert_eq!(http_get_with(e.http_port, "/dashboard/api/state", &[("Cookie", &aud_cookie)]).unwrap().status, 200);
    let out = tillit(&["admin", "revoke", "acme-aud", "--reason", "left", "--identity", &owner]);
    assert!(out.status.success(), "admin revoke: {}", stderr(&out));
    let a = http_get_with(e.http_port, "/dashboard/api/state", &[("Cookie", &aud_cookie)]).unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(!a.body.contains("acme/"), "{}", a.body);
    b.call(json!({ "cmd": "wait", "browser": "aud", "css": "#live-label", "equals": "session ended", "timeout": 15 }))
        .unwrap_or_else(|err| panic!("{err}\n{}", serve.log_text()));
    // The owner's session is untouched.
    assert_eq!(http_get_with(e.http_port, "/dashboard/api/state", &[("Cookie", &owner_cookie)]).unwrap().status, 200);
    drop(agent);
}
