//! `tillit import nsc`: an operator nsc manages, built here from nsc's documented layout (store
//! of JWTs, keys dir of seeds, creds), taken over into a new data dir; its users keep
//! connecting to the real hub, new services enroll into its accounts through tillit.

use crate::harness::*;
use nkeys::KeyPair;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tillit::issuer::jwt;
use tillit::layout::IdentityDir;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JWT as nsc writes it: `claims` around `nats`, signed by `signer`.
fn sign(signer: &KeyPair, sub: &str, name: &str, nats: Value, exp: Option<i64>) -> String {
    let mut c = json!({ "jti": jwt::new_jti().unwrap(), "iat": now(), "iss": signer.public_key(), "sub": sub, "name": name, "nats": nats });
    if let Some(e) = exp {
        c["exp"] = e.into();
    }
    jwt::encode_any(&c, signer).unwrap()
}

fn unlimited() -> Value {
    json!({ "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1 })
}

/// An operator `ACME` with its SYS account, `acme-prod` (a signing key, a stream export) and
/// `legacy` (a signing key, importing that stream), one user in each signed by the account's
/// signing key (with its `.creds`), and an expired user in `legacy`. With `billing`, also an
/// account no tenant maps to, whose user nsc signed with the account's identity key (as
/// `nsc add user` does without `--signing-key`).
struct NscFixture {
    store: PathBuf,
    keys: PathBuf,
    operator: KeyPair,
    operator_signing: KeyPair,
    acme: KeyPair,
    legacy: KeyPair,
    acme_signing: KeyPair,
}

impl NscFixture {
    fn build(root: &Path, billing: bool) -> Self {
        let store = root.join("nsc/stores");
        let keys = root.join("nsc/nkeys");
        let op_dir = store.join("ACME");
        let operator = KeyPair::new_operator();
        let operator_signing = KeyPair::new_operator();
        let sys = KeyPair::new_account();
        let (acme, acme_signing) = (KeyPair::new_account(), KeyPair::new_account());
        let (legacy, legacy_signing) = (KeyPair::new_account(), KeyPair::new_account());
        for k in [&operator, &operator_signing, &sys, &acme, &acme_signing, &legacy, &legacy_signing] {
            put_seed(&keys, k);
        }
        write(
            &op_dir.join("ACME.jwt"),
            &sign(&operator, &operator.public_key(), "ACME", json!({
                "type": "operator", "version": 2, "system_account": sys.public_key(),
                "signing_keys": [operator_signing.public_key()], "account_server_url": "nats://old-hub:4222",
            }), None),
        );
        // nsc's SYS account, as `nsc add operator --sys` makes it.
        write(
            &op_dir.join("accounts/SYS/SYS.jwt"),
            &sign(&operator_signing, &sys.public_key(), "SYS", json!({
                "type": "account", "version": 2, "limits": unlimited(),
                "exports": [
                    { "name": "account-monitoring-services", "subject": "$SYS.REQ.ACCOUNT.*.*", "type": "service", "response_type": "Stream", "account_token_position": 4 },
                    { "name": "account-monitoring-streams", "subject": "$SYS.ACCOUNT.*.>", "type": "stream", "account_token_position": 3 },
                ],
            }), None),
        );
        write(
            &op_dir.join("accounts/acme-prod/acme-prod.jwt"),
            &sign(&operator, &acme.public_key(), "acme-prod", json!({
                "type": "account", "version": 2, "limits": unlimited(),
                "signing_keys": [acme_signing.public_key()],
                "exports": [{ "name": "order events", "subject": "orders.events.>", "type": "stream", "description": "what orders publish" }],
            }), None),
        );
        write(
            &op_dir.join("accounts/legacy/legacy.jwt"),
            &sign(&operator_signing, &legacy.public_key(), "legacy", json!({
                "type": "account", "version": 2, "limits": unlimited(),
                "signing_keys": [legacy_signing.public_key()],
                "imports": [{ "name": "order events", "subject": "orders.events.>", "account": acme.public_key(), "type": "stream" }],
            }), None),
        );
        let user = |account: &str, acct: &KeyPair, signer: &KeyPair, name: &str, pubs: &[&str], subs: &[&str], exp: i64| {
            let u = KeyPair::new_user();
            let j = sign(signer, &u.public_key(), name, json!({
                "type": "user", "version": 2, "issuer_account": acct.public_key(),
                "pub": { "allow": pubs }, "sub": { "allow": subs }, "subs": -1, "data": -1, "payload": -1,
            }), Some(exp));
            write(&op_dir.join(format!("accounts/{account}/users/{name}.jwt")), &j);
            let creds = tillit::issuer::creds::format(&j, &tillit::crypto::SecretString::new(u.seed().unwrap()));
            write(&keys.join(format!("creds/ACME/{account}/{name}.creds")), creds.expose());
            put_seed(&keys, &u);
        };
        user("acme-prod", &acme, &acme_signing, "orders-bot", &["orders.>"], &["orders.>", "_INBOX.>"], now() + 3600);
        user("legacy", &legacy, &legacy_signing, "legacy-app", &["legacy.>"], &["orders.events.>", "legacy.>", "_INBOX.>"], now() + 7200);
        user("legacy", &legacy, &legacy_signing, "retired", &["legacy.>"], &["legacy.>"], now() - 60);
        if billing {
            let bill = KeyPair::new_account();
            put_seed(&keys, &bill);
            write(
                &op_dir.join("accounts/billing/billing.jwt"),
                &sign(&operator, &bill.public_key(), "billing", json!({ "type": "account", "version": 2, "limits": unlimited() }), None),
            );
            user("billing", &bill, &bill, "billing-job", &["billing.>"], &["billing.>", "_INBOX.>"], now() + 3600);
        }
        NscFixture { store, keys, operator, operator_signing, acme, legacy, acme_signing }
    }

    fn creds(&self, account: &str, user: &str) -> PathBuf {
        self.keys.join(format!("creds/ACME/{account}/{user}.creds"))
    }

    fn account_jwt(&self, account: &str) -> PathBuf {
        self.store.join(format!("ACME/accounts/{account}/{account}.jwt"))
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--store", self.store.to_str().unwrap(), "--keys", self.keys.to_str().unwrap(), "--map", "legacy=globex/dev"];
        a.extend(extra);
        a
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `KEYS/keys/<kind>/<2nd-3rd char>/<public key>.nk` holding the seed.
fn seed_path(keys: &Path, public_key: &str) -> PathBuf {
    keys.join("keys").join(&public_key[..1]).join(&public_key[1..3]).join(format!("{public_key}.nk"))
}

fn put_seed(keys: &Path, kp: &KeyPair) {
    write(&seed_path(keys, &kp.public_key()), &kp.seed().unwrap());
}

/// Connect as a user nsc issued: its `.creds` and the client certificate the import wrote.
async fn connect_nsc(url: &str, clients: &IdentityDir, creds: &Path) -> Result<async_nats::Client, String> {
    use tillit::client::tls;
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let key = tls::certified_key(&read(clients.cert()), &read(clients.key())).unwrap();
    let cfg = tls::client_config(&read(clients.ca()), tls::SwappableCert::new(key)).unwrap();
    async_nats::ConnectOptions::with_credentials(&std::fs::read_to_string(creds).unwrap())
        .unwrap()
        .require_tls(true)
        .tls_client_config(cfg)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(1))
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// A message on `sub` within two seconds.
async fn next(sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(2), sub.next()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsc_operator_is_taken_over_and_its_users_keep_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let nsc = NscFixture::build(tmp.path(), true);

    // 1. The plan writes nothing and says what becomes what.
    let data = tmp.path().join("data");
    let plan_out = tillit(&[&["import", "nsc"][..], &nsc.args(&["--plan", "--json", "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org"])].concat());
    assert!(plan_out.status.success(), "{}", stderr(&plan_out));
    assert!(!data.exists(), "--plan wrote the data dir");
    let plan: Value = serde_json::from_str(&stdout(&plan_out)).unwrap();
    assert_eq!(plan["operator"]["public_key"], nsc.operator.public_key());
    assert_eq!(plan["operator"]["strict_signing_key_usage"], false, "billing-job is signed by its account's identity key");
    let acct = |name: &str| plan["accounts"].as_array().unwrap().iter().find(|a| a["name"] == name).cloned().unwrap_or_else(|| panic!("{name} in {plan}"));
    assert_eq!(acct("SYS")["becomes"], "system");
    assert_eq!(acct("acme-prod")["becomes"], "tenant");
    assert_eq!(acct("acme-prod")["tenant"], "acme/prod");
    assert_eq!(acct("acme-prod")["signing_keys"], json!([nsc.acme_signing.public_key()]));
    assert_eq!(acct("acme-prod")["exports"], 1);
    assert_eq!(acct("legacy")["tenant"], "globex/dev");
    assert_eq!(acct("legacy")["tillit_name"], "globex-dev");
    assert_eq!(acct("legacy")["imports"], 1);
    assert_eq!(acct("billing")["becomes"], "as-is");
    assert_eq!(acct("billing")["users"][0]["signed_by"], "account");
    let users = acct("legacy")["users"].as_array().unwrap().clone();
    let user = |n: &str| users.iter().find(|u| u["name"] == n).unwrap().clone();
    assert_eq!(user("legacy-app")["keeps_working"], true);
    assert_eq!(user("legacy-app")["creds"], true);
    assert_eq!(user("retired")["keeps_working"], false);
    let cannot = plan["cannot_represent"].to_string();
    for said in [
        nsc.operator_signing.public_key().as_str(),
        "account_server_url",
        "user retired of account legacy will not connect",
        "not re-issued",
        "stream export $SYS.ACCOUNT.*.> (account-monitoring-streams) is dropped",
        "strict signing key usage stays off",
    ] {
        assert!(cannot.contains(said), "the plan names {said:?}: {cannot}");
    }
    assert_eq!(plan["blocking"], json!([]));
    // The text form says the same, one fact a line; --store may name the operator's dir and
    // --keys the `keys/` dir itself.
    let (op_dir, keys_dir) = (nsc.store.join("ACME"), nsc.keys.join("keys"));
    let text = stdout(&tillit(&[
        "import", "nsc", "--plan", "--store", op_dir.to_str().unwrap(), "--keys", keys_dir.to_str().unwrap(), "--map", "legacy=globex/dev",
        "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org",
    ]));
    for said in ["account legacy", "tenant globex/dev", "account billing", "adopted as-is", "creds file found", "nothing written"] {
        assert!(text.contains(said), "{said:?} in {text}");
    }
    assert!(!data.exists());

    // 2. The import; nats-server and serve on it; the users nsc issued connect and talk across
    // the export/import nsc set up.
    let (out, e) = Estate::import_nsc("example.org", tmp, &nsc.args(&[]));
    assert!(out.status.success(), "import: {}", stderr(&out));
    // Planned again into the data dir it made: init would refuse it, so the plan does.
    let again = tillit(&[&["import", "nsc"][..], &nsc.args(&["--plan", "--json", "--data-dir", e.data(), "--trust-domain", "example.org"])].concat());
    let again: Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert!(again["blocking"].to_string().contains("is not empty"), "{again}");
    // Every seed taken over is sealed: none is in any file of the data dir in clear.
    let seeds: Vec<String> = [&nsc.operator, &nsc.acme, &nsc.acme_signing, &nsc.legacy].iter().map(|k| k.seed().unwrap()).collect();
    let mut files = vec![e.dir.root().to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|d| d.unwrap().path()));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            for seed in &seeds {
                assert!(!bytes.windows(seed.len()).any(|w| w == seed.as_bytes()), "a seed in clear in {}", p.display());
            }
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(e.dir.nsc_clients().key()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the nsc users' client key");
    }
    // The hub knows the adopted accounts before serve first pushes them, and `config render`
    // makes the same configuration.
    let conf = std::fs::read_to_string(e.dir.server_conf()).unwrap();
    for k in [nsc.acme.public_key(), nsc.legacy.public_key()] {
        assert!(conf.contains(&k), "{k} preloaded");
    }
    let check = tillit(&["config", "render", "--data-dir", e.data(), "--check"]);
    assert!(stdout(&check).contains("is current"), "{}{}", stdout(&check), stderr(&check));
    let nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let op = std::fs::read_to_string(e.dir.operator_jwt()).unwrap();
    let op: jwt::Claims<Value> = jwt::decode(&op).unwrap();
    assert_eq!(op.sub, nsc.operator.public_key(), "the operator keeps its key");
    assert!(!op.nats["signing_keys"].to_string().contains(&nsc.operator_signing.public_key()), "nsc's operator signing key is dropped");
    let clients = e.dir.nsc_clients();
    let bot = connect_nsc(&nats.url(), &clients, &nsc.creds("acme-prod", "orders-bot")).await.expect("nsc's acme-prod user connects");
    let app = connect_nsc(&nats.url(), &clients, &nsc.creds("legacy", "legacy-app")).await.expect("nsc's legacy user connects");
    let mut own = bot.subscribe("orders.own").await.unwrap();
    let mut imported = app.subscribe("orders.events.>").await.unwrap();
    barrier_plain(&bot, "orders.nobody").await;
    barrier_plain(&app, "legacy.nobody").await;
    bot.publish("orders.own", "self".into()).await.unwrap();
    bot.publish("orders.events.created", "o-1".into()).await.unwrap();
    bot.flush().await.unwrap();
    assert_eq!(next(&mut own).await.expect("its own subject").payload, "self");
    assert_eq!(next(&mut imported).await.expect("the stream legacy imports from acme-prod").payload, "o-1");
    // The as-is account's user, signed by the account's identity key, works in its subjects.
    let job = connect_nsc(&nats.url(), &clients, &nsc.creds("billing", "billing-job")).await.expect("nsc's billing user connects");
    let mut bills = job.subscribe("billing.run").await.unwrap();
    barrier_plain(&job, "billing.nobody").await;
    job.publish("billing.run", "b-1".into()).await.unwrap();
    assert_eq!(next(&mut bills).await.expect("billing's own subject").payload, "b-1");
    let err = connect_nsc(&nats.url(), &clients, &nsc.creds("legacy", "retired")).await.expect_err("an expired nsc user");
    eprintln!("expired nsc user refused: {err}");

    // 3. A new service enrolls into the adopted tenant account through tillit, gets a grant,
    // publishes into nsc's export; a revocation through tillit drops it.
    let svc = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", "orders.events.>", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = tillit::identity::load(&IdentityDir::new(&svc)).unwrap();
    let session = tillit::Identity::load(&svc).unwrap().connect().await.unwrap();
    session.renew_now().await.unwrap();
    let c = session.client();
    assert!(files.user_jwt.len() > 10);
    let claims: jwt::Claims<Value> = jwt::decode(&files.user_jwt).unwrap();
    assert_eq!(claims.nats["issuer_account"], nsc.acme.public_key(), "enrolled INTO the adopted account");
    c.publish("orders.events.from-tillit", "o-2".into()).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(next(&mut imported).await.expect("a tillit service reaches nsc's legacy user").payload, "o-2");
    // nsc's users survived tillit re-signing acme-prod with its role key.
    let bot2 = connect_nsc(&nats.url(), &clients, &nsc.creds("acme-prod", "orders-bot")).await.expect("nsc's user after tillit changed its account");
    bot2.flush().await.unwrap();
    let started = std::time::Instant::now();
    let out = tillit(&["revoke", "acme/shop/prod/orders", "--reason", "test", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dropped = wait_async(Duration::from_secs(5), || c.connection_state() != async_nats::connection::State::Connected).await;
    assert!(dropped, "the revoked service is still connected");
    eprintln!("revoke to disconnect: {:?}", started.elapsed());
    let again = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await;
    assert!(again.is_err(), "a revoked service connects again");
    assert!(connect_nsc(&nats.url(), &clients, &nsc.creds("legacy", "legacy-app")).await.is_ok(), "nsc users are untouched by a service's revocation");

    // Every adopted item is in the audit log, by `import`; the log verifies.
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let audit = std::fs::read_to_string(e.dir.audit_log()).unwrap();
    let adopted: Vec<Value> = audit.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v.to_string().contains("\"import\"")).collect();
    let targets: Vec<String> = adopted.iter().map(|v| v.to_string()).collect();
    for t in ["operator.adopt", "\"SYS\"", "\"acme-prod\"", "\"globex-dev\"", "\"billing\""] {
        assert!(targets.iter().any(|x| x.contains(t)), "audit has {t}: {targets:#?}");
    }
}

/// Wait until the server processed what `c` sent before: a request to `subject` (one it may
/// publish, nobody answers) comes back as "no responders" only after that.
async fn barrier_plain(c: &async_nats::Client, subject: &str) {
    let r = c.request(subject.to_string(), "".into()).await;
    assert!(matches!(&r, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders), "barrier on {subject}: {r:?}");
}

async fn wait_async(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[test]
fn an_import_is_refused_whole_when_a_key_or_a_signature_is_wrong() {
    // Each case: a fresh fixture, one thing broken, a refusal that says what, no data dir.
    type Break = fn(&NscFixture);
    let cases: [(&str, Break, &[&str]); 6] = [
        ("missing operator seed", |n| std::fs::remove_file(seed_path(&n.keys, &n.operator.public_key())).unwrap(), &["seed of operator ACME", "--keys"]),
        ("missing account seed", |n| std::fs::remove_file(seed_path(&n.keys, &n.acme.public_key())).unwrap(), &["seed of account acme-prod", "--skip"]),
        (
            "tampered account JWT",
            |n| {
                let p = n.account_jwt("legacy");
                let text = std::fs::read_to_string(&p).unwrap();
                let parts: Vec<&str> = text.split('.').collect();
                let mut claims: Value = serde_json::from_slice(&data_encoding::BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
                claims["nats"]["limits"]["conn"] = json!(-1);
                claims["nats"]["exports"] = json!([{ "name": "everything", "subject": ">", "type": "stream" }]);
                let body = data_encoding::BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).unwrap());
                write(&p, &format!("{}.{body}.{}", parts[0], parts[2]));
            },
            &["legacy.jwt", "does not verify"],
        ),
        (
            "account signed by a stranger",
            |n| {
                let stranger = KeyPair::new_operator();
                let j = sign(&stranger, &n.acme.public_key(), "acme-prod", json!({ "type": "account", "version": 2, "limits": unlimited() }), None);
                write(&n.account_jwt("acme-prod"), &j);
            },
            &["acme-prod", "neither the operator", "--skip acme-prod"],
        ),
        ("malformed store", |n| std::fs::remove_file(n.account_jwt("legacy")).unwrap(), &["an account dir without legacy.jwt"]),
        (
            "a seed filed under another key",
            |n| write(&seed_path(&n.keys, &n.acme.public_key()), &KeyPair::new_account().seed().unwrap()),
            &["the seed there is for", "not for"],
        ),
    ];
    for (what, break_it, says) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let nsc = NscFixture::build(tmp.path(), false);
        break_it(&nsc);
        let (out, e) = Estate::import_nsc("example.org", tmp, &nsc.args(&[]));
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: imported anyway");
        for s in says {
            assert!(err.contains(s), "{what}: the refusal names {s:?}: {err}");
        }
        assert!(!e.dir.root().exists(), "{what}: a data dir was written");
        let leftovers: Vec<_> = std::fs::read_dir(e.tmp.path()).unwrap().filter_map(|d| d.ok()).map(|d| d.file_name()).filter(|n| n != "nsc").collect();
        assert!(leftovers.is_empty(), "{what}: left {leftovers:?}");
        eprintln!("{what}: {}", err.trim());
    }
    // A missing account seed is blocking in the plan too (and the plan still writes nothing).
    let tmp = tempfile::tempdir().unwrap();
    let nsc = NscFixture::build(tmp.path(), false);
    std::fs::remove_file(seed_path(&nsc.keys, &nsc.legacy.public_key())).unwrap();
    let data = tmp.path().join("data");
    let out = tillit(&[&["import", "nsc"][..], &nsc.args(&["--plan", "--json", "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org"])].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(plan["blocking"].to_string().contains("account legacy"), "{plan}");
    assert_eq!(plan["operator"]["strict_signing_key_usage"], true, "every user is signed by a signing key");
    assert!(!data.exists());
    // An account both mapped and left out is a mistake, said as such.
    let out = tillit(&[&["import", "nsc"][..], &nsc.args(&["--plan", "--json", "--skip", "legacy", "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org"])].concat());
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("--skip"), "mapped and skipped at once: {err}");
    // A store of several operators needs --operator.
    write(&nsc.store.join("OTHER/OTHER.jwt"), "not read");
    let out = tillit(&[&["import", "nsc"][..], &nsc.args(&["--plan", "--skip", "acme-prod", "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org"])].concat());
    assert!(stderr(&out).contains("several operators (ACME, OTHER); choose one with --operator"), "{}", stderr(&out));
    let out = tillit(&[
        "import", "nsc", "--plan", "--json", "--operator", "ACME", "--skip", "legacy", "--store", nsc.store.to_str().unwrap(), "--keys", nsc.keys.to_str().unwrap(),
        "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(plan["skipped"], json!(["legacy"]));
    // Without --keys: NKEYS_PATH, as nsc reads it.
    let store = nsc.store.join("ACME");
    let out = tillit_env(
        &["import", "nsc", "--plan", "--json", "--skip", "legacy", "--store", store.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--trust-domain", "example.org"],
        &[("NKEYS_PATH", nsc.keys.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let by_env: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(by_env["blocking"], json!([]), "{by_env}");
    assert_eq!(plan["blocking"], json!([]), "left out, its missing seed blocks nothing");
    assert!(!data.exists());
}
