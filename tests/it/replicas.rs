//! Several `tillit serve` replicas on one JetStream store: they share the estate, serve every
//! verb, never lose a concurrent change, and one leader at a time runs the singleton jobs; a
//! killed or paused leader is replaced, and a retried request has its first effect only.

use crate::harness::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SVC: &str = "acme/shop/prod/orders";

/// A replica started from its own data dir (made by `tillit store replica`).
struct Replica {
    serve: Serve,
    port: u16,
}

/// An estate on JetStream whose certificates name a second replica's OCSP responder at `port`.
fn jetstream_estate(td: &str, port: u16) -> Estate {
    Estate::init_args(td, &["--store", "jetstream", "--replica-url", &format!("http://127.0.0.1:{port}")])
}

/// An estate on JetStream with its hub and two replicas, both ready.
fn two_replicas(td: &str) -> (Estate, NatsServer, Serve, Replica) {
    let pb = free_port();
    let e = jetstream_estate(td, pb);
    let nats = e.start_nats();
    let a = e.start_serve_ready();
    let b = start_replica(&e, "replica-b", pb);
    (e, nats, a, b)
}

fn start_replica(e: &Estate, name: &str, port: u16) -> Replica {
    let dir = e.tmp.path().join(name);
    let out = tillit(&["store", "replica", "--data-dir", e.data(), "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "store replica: {}", stderr(&out));
    let serve = Serve::start_args(&dir, &["--http-addr", &format!("127.0.0.1:{port}")]);
    wait_for(Duration::from_secs(20), || http_get(port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false))
        .unwrap_or_else(|| panic!("replica {name} never became ready:\n{}", serve.log_text()));
    Replica { serve, port }
}

fn status(e: &Estate) -> serde_json::Value {
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("status JSON")
}

/// The sum of a metric's samples whose line starts with `prefix` on the replica at `port`.
fn metric(port: u16, prefix: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics").expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The leader's replica id and fencing token, as the store says.
fn leader(e: &Estate) -> (String, u64) {
    let s = status(e);
    let l = &s["store"]["leader"];
    (l["replica"].as_str().unwrap_or_default().to_string(), l["token"].as_u64().unwrap_or(0))
}

/// Which of `ports` the replica `id` listens on (from `status`).
fn port_of(e: &Estate, id: &str) -> u16 {
    let s = status(e);
    let r = s["store"]["replicas"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id} not in {s}"));
    r["http_addr"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn two_replicas_share_one_estate_and_lose_no_concurrent_change() {
    let (e, _nats, _a, b) = two_replicas("replicas.example");
    let orders = enroll_one(&e, SVC, "orders");

    // Sixteen grants to one service at the same instant, through both replicas: every one
    // stays (each replica's change was computed again when the other's came first).
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let admin = e.admin();
            std::thread::spawn(move || tillit(&["grant", "--identity", &admin, SVC, "--pub", &format!("orders.g{i}")]))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "grant: {}", stderr(&out));
    }
    let out = tillit(&["grants", "--identity", &e.admin(), SVC, "--json"]);
    let grants = stdout(&out);
    for i in 0..16 {
        assert!(grants.contains(&format!("\"orders.g{i}\"")), "grant {i} lost: {grants}");
    }
    let ok = |port| metric(port, "tillit_requests_total{endpoint=\"tillit.v1.admin.grant\",outcome=\"ok\"}");
    assert!(ok(e.http_port) > 0.0 && ok(b.port) > 0.0, "both replicas answered grants: {} and {}", ok(e.http_port), ok(b.port));
    assert_eq!(ok(e.http_port) + ok(b.port), 16.0, "each grant answered once");

    // The service reads a secret any replica serves.
    let out = secret_put(&e, "acme/shop/prod/db-password", "hunter2-replicated", &[SVC]);
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..6 {
        let out = tillit(&["secret", "get", "db-password", "--identity", orders.to_str().unwrap()]);
        assert_eq!(stdout(&out), "hunter2-replicated", "{}", stderr(&out));
    }

    // The journal stream pages back: the records just before a page's first.
    let tail = |args: &[&str]| -> Vec<u64> {
        let admin = e.admin();
        let mut all = vec!["audit", "tail", "--identity", admin.as_str(), "--json"];
        all.extend_from_slice(args);
        let out = tillit(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v["seq"].as_u64()).collect()
    };
    let newest = tail(&["-n", "3"]);
    assert_eq!(newest.len(), 3, "{newest:?}");
    let first = newest[0].to_string();
    let before = tail(&["-n", "4", "--before", &first]);
    assert_eq!(before, (newest[0] - 4..newest[0]).collect::<Vec<u64>>(), "the four records just before {first}");

    // Status names the store, both replicas and the one leader.
    let s = status(&e);
    assert_eq!(s["store"]["backend"], "jetstream", "{s}");
    assert_eq!(s["store"]["bucket"], "tillit");
    let ids: Vec<&str> = s["store"]["replicas"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{s}");
    let (lead, token) = leader(&e);
    assert!(ids.contains(&lead.as_str()) && token >= 1, "{s}");
    let leaders = metric(e.http_port, "tillit_leader ") + metric(b.port, "tillit_leader ");
    assert_eq!(leaders, 1.0, "exactly one replica leads");

    // The journal: one chain across both replicas, every record authenticated.
    let out = tillit(&["audit", "verify", "--data-dir", e.data(), "--json"]);
    assert!(out.status.success(), "audit verify: {}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["records"].as_u64().unwrap() >= 20, "{v}");
    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "-n", "200", "--json"]);
    assert_eq!(stdout(&out).matches("\"action\":\"grant\"").count(), 16, "one record per grant");

    // Nothing in clear in the bucket.
    let js = e.dir.root().join("nats").join("jetstream");
    for entry in walk(&js) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(18).any(|w| w == b"hunter2-replicated"), "plaintext in {}", entry.display());
    }
}

#[test]
fn killing_the_leader_loses_no_enrollment_and_moves_the_jobs() {
    let (e, nats, mut a, mut b) = two_replicas("failover.example");
    const N: usize = 48;
    let tokens = create_tokens(&e, "acme/shop/prod/api", N as u32, "15m");
    let (lead, token) = leader(&e);
    let lead_port = port_of(&e, &lead);

    // Enroll and renew at 8 in flight; kill -9 the leader once a quarter is done.
    let queue = std::sync::Arc::new(std::sync::Mutex::new(tokens.into_iter().enumerate().collect::<Vec<_>>()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let root = e.tmp.path().to_path_buf();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (queue, done, failures, root) = (queue.clone(), done.clone(), failures.clone(), root.clone());
            std::thread::spawn(move || loop {
                let Some((i, token)) = queue.lock().unwrap().pop() else { return };
                let dir = root.join(format!("api-{i}"));
                let out = enroll_cli(&token, &dir);
                if !out.status.success() {
                    failures.lock().unwrap().push(format!("enroll {i}: {}", stderr(&out)));
                    continue;
                }
                let out = tillit(&["renew", "--identity", dir.to_str().unwrap()]);
                if !out.status.success() {
                    failures.lock().unwrap().push(format!("renew {i}: {}", stderr(&out)));
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    if wait_for(Duration::from_secs(60), || done.load(std::sync::atomic::Ordering::SeqCst) >= N / 4).is_none() {
        panic!(
            "a quarter not enrolled within 60 s ({} done); failures: {:?}\n--- a:\n{}\n--- b:\n{}",
            done.load(std::sync::atomic::Ordering::SeqCst),
            failures.lock().unwrap(),
            a.log_text(),
            b.serve.log_text()
        );
    }
    let killed_at = Instant::now();
    let (a_log, b_log, nats_log) = (a.log.clone(), b.serve.log.clone(), nats.log.clone());
    let both_logs = move || {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- replica a:\n{}\n--- replica b:\n{}\n--- nats-server:\n{}", read(&a_log), read(&b_log), read(&nats_log))
    };
    let survivor_port = if lead_port == e.http_port {
        a.child.kill().unwrap();
        let _ = a.child.wait();
        b.port
    } else {
        b.serve.child.kill().unwrap();
        let _ = b.serve.child.wait();
        e.http_port
    };
    // The survivor takes the lease over with the next fencing token.
    wait_for(Duration::from_secs(10), || metric(survivor_port, "tillit_leader ") == 1.0).expect("a new leader");
    let gap = killed_at.elapsed();
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "no client sees an error: {failures:#?}\n{}", both_logs());
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), N);
    assert!(gap < Duration::from_secs(3), "the jobs moved to a new leader in {gap:?}");
    let (new_lead, new_token) = leader(&e);
    assert_ne!(new_lead, lead);
    assert!(new_token > token, "fencing token grew: {token} → {new_token}");

    // Every enrollment is there once, and every identity works.
    let out = tillit(&["list", "--identity", &e.admin(), "--json"]);
    let list = stdout(&out);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let api = v.as_array().or_else(|| v["identities"].as_array()).unwrap().iter().filter(|i| i.to_string().contains("acme/shop/prod/api")).count();
    assert_eq!(api, N, "one identity per token: {list}");
    for i in [0, N / 2, N - 1] {
        let dir = root.join(format!("api-{i}"));
        let out = tillit(&["renew", "--identity", dir.to_str().unwrap()]);
        assert!(out.status.success(), "renew {i}: {}", stderr(&out));
    }
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "audit verify: {}{}", stdout(&out), stderr(&out));
}

#[test]
fn a_paused_leader_is_deposed_and_acts_no_more_when_it_resumes() {
    let (e, _nats, a, b) = two_replicas("fencing.example");
    let (lead, token) = leader(&e);
    let (paused_pid, paused_port, other_port) =
        if port_of(&e, &lead) == e.http_port { (a.child.id(), e.http_port, b.port) } else { (b.serve.child.id(), b.port, e.http_port) };
    let kill = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &paused_pid.to_string()]).status().unwrap().success());
    kill("-STOP");
    wait_for(Duration::from_secs(10), || metric(other_port, "tillit_leader ") == 1.0).expect("the other replica takes over");
    let (new_lead, new_token) = leader(&e);
    assert_ne!(new_lead, lead);
    assert_eq!(new_token, token + 1);
    kill("-CONT");
    // Resumed, the old leader finds its lease gone and follows; the new one keeps its token.
    wait_for(Duration::from_secs(5), || metric(paused_port, "tillit_leader ") == 0.0).expect("the resumed replica follows");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(leader(&e), (new_lead, new_token), "no second change of leader");
    assert_eq!(metric(paused_port, "tillit_leader ") + metric(other_port, "tillit_leader "), 1.0);
    // Both keep serving, and the journal has one chain.
    let _svc = enroll_one(&e, SVC, "orders");
    for i in 0..4 {
        let out = tillit(&["grant", "--identity", &e.admin(), SVC, "--pub", &format!("after.{i}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "audit verify: {}{}", stdout(&out), stderr(&out));
}

#[test]
fn a_sled_estate_migrates_and_is_served_by_two_replicas() {
    let e = Estate::init("migrate.example");
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let orders = enroll_one(&e, SVC, "orders");
    let out = secret_put(&e, "acme/shop/prod/db-password", "before-migration", &[SVC]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Refused while serve runs on the data dir.
    let out = tillit(&["store", "migrate", "--to", "jetstream", "--data-dir", e.data()]);
    assert!(!out.status.success() && stderr(&out).contains("in use"), "{}", stderr(&out));
    serve.terminate(Duration::from_secs(10));
    let records_before = {
        let out = tillit(&["audit", "verify", "--data-dir", e.data(), "--json"]);
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["records"].as_u64().unwrap()
    };
    let sled_before = sled_records(&e);

    let out = tillit(&["store", "migrate", "--to", "jetstream", "--data-dir", e.data()]);
    assert!(out.status.success(), "migrate: {}{}", stdout(&out), stderr(&out));
    assert_eq!(sled_records(&e), sled_before, "the sled store is left as it was");
    let out = tillit(&["store", "migrate", "--to", "jetstream", "--data-dir", e.data()]);
    assert!(!out.status.success(), "a second migration is refused");

    let _a = e.start_serve_ready();
    let _b = start_replica(&e, "replica-b", free_port());
    // The audit chain came along, and grows on the stream.
    let out = tillit(&["audit", "verify", "--data-dir", e.data(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["records"].as_u64().unwrap() >= records_before, "{v}");
    // The migrated identity renews and reads its secret, through either replica.
    for _ in 0..3 {
        let out = tillit(&["renew", "--identity", orders.to_str().unwrap()]);
        assert!(out.status.success(), "renew: {}", stderr(&out));
        let out = tillit(&["secret", "get", "db-password", "--identity", orders.to_str().unwrap()]);
        assert_eq!(stdout(&out), "before-migration", "{}", stderr(&out));
    }
    assert_eq!(status(&e)["store"]["backend"], "jetstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_hub_keeps_serving_when_a_node_dies_and_nothing_diverges() {
    let (client, route, pb) = (free_ports(3), free_ports(3), free_port());
    let e = Estate::init_on(
        "cluster.example",
        client,
        &["--store", "jetstream", "--store-replicas", "3", "--cluster", "3", "--cluster-port", &route.to_string(), "--replica-url", &format!("http://127.0.0.1:{pb}")],
    );
    assert!(!e.dir.server_conf().exists(), "a clustered hub has one config per node");
    let conf = std::fs::read_to_string(e.dir.node_conf(2)).unwrap();
    assert!(conf.contains("cluster {") && conf.contains(&format!("nats-route://127.0.0.1:{route}")) && conf.contains("verify: true"), "{conf}");
    let mut nodes: Vec<NatsServer> = (1..=3).map(|n| NatsServer::start(&e.dir.node_conf(n), client + n as u16 - 1)).collect();
    let a = e.start_serve_ready();
    let b = start_replica(&e, "replica-b", pb);
    let logs = || format!("--- a:\n{}\n--- b:\n{}", a.log_text(), b.serve.log_text());
    let orders = enroll_one(&e, SVC, "orders");
    let out = secret_put(&e, "acme/shop/prod/db-password", "clustered", &[SVC]);
    assert!(out.status.success(), "{}", stderr(&out));

    // kill -9 one node of three: tillit keeps serving every verb. The raft groups whose leader
    // was on it elect another (nats-server takes 4 to 9 s); tillit waits for them, and a
    // request caught by that wait may be asked once more by its caller, the same way.
    nodes[1].stop();
    let killed = Instant::now();
    let mut again = 0;
    let mut run = |args: &[&str]| {
        let start = Instant::now();
        for _ in 0..3 {
            let out = tillit(args);
            let err = stderr(&out);
            if out.status.success() || !(err.contains("no reply") || err.contains("unavailable") || err.contains("not reachable")) {
                assert!(start.elapsed() < Duration::from_secs(25), "{args:?} took {:?}", start.elapsed());
                return out;
            }
            again += 1;
        }
        panic!("{args:?} failed three times:\n{}", logs());
    };
    let out = run(&["token", "create", "--identity", &e.admin(), "--tenant", "acme", "--project", "shop", "--env", "prod", "--service", "orders"]);
    assert!(out.status.success(), "token create: {}\n{}", stderr(&out), logs());
    let later = e.tmp.path().join("orders-2");
    let out = enroll_cli(stdout(&out).trim(), &later);
    assert!(out.status.success(), "enroll: {}\n{}", stderr(&out), logs());
    for (i, svc) in [&orders, &later].into_iter().enumerate() {
        let out = run(&["renew", "--identity", svc.to_str().unwrap()]);
        assert!(out.status.success(), "renew: {}", stderr(&out));
        let out = run(&["secret", "get", "db-password", "--identity", svc.to_str().unwrap()]);
        assert_eq!(stdout(&out), "clustered", "{}", stderr(&out));
        let out = run(&["grant", "--identity", &e.admin(), SVC, "--pub", &format!("during.{i}")]);
        assert!(out.status.success(), "grant: {}\n{}", stderr(&out), logs());
    }
    assert!(again <= 2, "at most the requests caught by the election were asked again ({again})");
    eprintln!("served through the node's loss in {:?} ({again} asked again)", killed.elapsed());

    // The node returns and catches up: every replica of the bucket and the journal is current.
    nodes[1] = NatsServer::start(&e.dir.node_conf(2), client + 1);
    let _more = enroll_one(&e, SVC, "orders-3");
    let master = tillit::crypto::MasterKey::load(e.dir.root()).unwrap();
    let access = tillit::store::StoreAccess::read(&e.dir, &master).unwrap();
    let nc = tillit::client::connect(&access.connect_params(vec![e.nats_url()], "test").unwrap()).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    for stream in ["KV_tillit", "TILLIT_JOURNAL"] {
        let mut current = false;
        let mut last = String::new();
        for _ in 0..100 {
            let info = js.get_stream(stream).await.unwrap().get_info().await.unwrap();
            let c = info.cluster.clone().expect("clustered");
            last = format!("{c:?}");
            if c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current && !r.offline && r.lag.unwrap_or(0) == 0) && c.leader.is_some() {
                current = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(current, "{stream}: every replica current, none lagging: {last}");
    }
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "audit verify: {}{}", stdout(&out), stderr(&out));
    // Both replicas answer with the grants made during the outage: once the returned node has
    // caught up, six answers in a row hold both, whichever replica gives them. (A lost grant
    // never does. On a loaded box a request may get no answer while the groups settle, and is
    // asked again, for up to 30 s; a stale answer on the way is printed.)
    let mut last = String::new();
    let converged = wait_for(Duration::from_secs(30), || {
        (0..6).all(|_| {
            let out = tillit(&["grants", "--identity", &e.admin(), SVC, "--json"]);
            last = format!("{}{}", stdout(&out), stderr(&out));
            let both = stdout(&out).contains("\"during.0\"") && stdout(&out).contains("\"during.1\"");
            if out.status.success() && !both {
                eprintln!("an answer without a grant made during the outage (stale?): {}", stdout(&out));
            }
            out.status.success() && both
        })
    });
    assert!(converged.is_some(), "a grant made during the outage is missing, or no six answers in a row within 30 s; the last: {last}\n{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_gets_its_first_reply_on_any_replica() {
    use tillit::client::enroll::{bootstrap_params, LocalKeys};
    use tillit::token::JoinToken;
    let (e, _nats, _a, _b) = two_replicas("retry.example");
    let count = |e: &Estate| status(e)["counts"]["identities"].as_u64().unwrap();
    let before = count(&e);

    // The very same signed enrollment, sent six times (a client whose replies were lost): the
    // same reply every time, whichever replica answers; one identity; never `token_used`.
    let token_text = create_tokens(&e, SVC, 1, "15m").remove(0);
    let token = JoinToken::decode(&token_text).unwrap();
    let nc = tillit::client::connect(&bootstrap_params(&token, token.nats_urls.clone()).unwrap()).await.unwrap();
    let keys = LocalKeys::generate().unwrap();
    let signed = tillit::proto::sign_request(
        &keys.user,
        "retry.example",
        "tillit.v1.enroll",
        "io.tillit.v1.enroll",
        keys.enroll_request(&token),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64,
    )
    .unwrap();
    let mut replies = Vec::new();
    for k in 0..6 {
        // A client sends again only after a reply was lost (it waits 2.5 s); the replica that
        // answered shares the reply in the background meanwhile. 300 ms between sends keeps that
        // order on a loaded machine, and every send within the bootstrap user's 3 s grace.
        if k > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let m = nc.request("tillit.v1.enroll", signed.clone().into_bytes().into()).await.expect("a reply");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(v["result"]["cert_serial"].is_string(), "{v}");
        replies.push(v);
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "one reply, sent again: {replies:#?}");
    assert_eq!(count(&e), before + 1, "one identity for six sends");

    // The replies shared in the bucket are sealed with the master key: the token the admin was
    // given (a bearer secret until used) is nowhere in the hub's JetStream files, though the
    // kept replies are there.
    fn files_where(dir: &std::path::Path, found: &dyn Fn(&[u8]) -> bool) -> usize {
        let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
        rd.filter_map(|e| e.ok())
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => files_where(&e.path(), found),
                _ => std::fs::read(e.path()).map(|b| found(&b) as usize).unwrap_or(0),
            })
            .sum()
    }
    // A kept reply as stored: {"exp":<digits>,"sealed":"…
    let stored_reply = |b: &[u8]| {
        b.windows(6).enumerate().any(|(i, w)| {
            w == b"\"exp\":" && {
                let rest = &b[i + 6..];
                let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
                digits > 0 && rest[digits..].starts_with(b",\"sealed\":\"")
            }
        })
    };
    let js = e.dir.jetstream();
    let kept = wait_for(Duration::from_secs(5), || files_where(&js, &stored_reply) > 0);
    assert!(kept.is_some(), "no sealed kept reply in the hub's JetStream files under {}", js.display());
    let token = token_text.as_bytes().to_vec();
    assert_eq!(files_where(&js, &|b| b.windows(token.len()).any(|w| w == token)), 0, "a join token lies in clear in the hub's JetStream files");

    // A grant sent twice: one change, one audit record, the same reply.
    let (admin, anc) = admin_connect(&e).await;
    let admin_key = nkeys::KeyPair::from_seed(admin.user_seed.expose()).unwrap();
    let body = serde_json::json!({ "service": SVC, "pub": ["retried.once"], "sub": [] });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let signed = tillit::proto::sign_request(&admin_key, "retry.example", "tillit.v1.admin.grant", "io.tillit.v1.admin.grant", body, now).unwrap();
    let mut replies = Vec::new();
    for k in 0..4 {
        if k > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await; // as above: a client resends after a wait
        }
        let m = anc.request("tillit.v1.admin.grant", signed.clone().into_bytes().into()).await.expect("a reply");
        replies.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert!(replies[0].contains("\"result\""), "{}", replies[0]);
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "{replies:#?}");
    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "-n", "100", "--json"]);
    let grants = stdout(&out).lines().filter(|l| l.contains("\"action\":\"grant\"") && l.contains("retried.once")).count();
    assert_eq!(grants, 1, "one record: {}", stdout(&out));

    // An admin is in the control plane's account, yet reaches neither the bucket, the journal
    // nor the JetStream API: only the control plane's own users may.
    let records = |e: &Estate| {
        let out = tillit(&["audit", "verify", "--data-dir", e.data(), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["records"].as_u64().unwrap()
    };
    records(&e);
    for subject in ["$JS.API.STREAM.INFO.TILLIT_JOURNAL", "$JS.API.STREAM.DELETE.KV_tillit", "$JS.API.INFO"] {
        let r = tokio::time::timeout(Duration::from_secs(2), anc.request(subject, "".into())).await;
        assert!(!matches!(r, Ok(Ok(_))), "{subject} answered an admin: {r:?}");
    }
    anc.publish("tillit.journal", "{\"seq\":999}".into()).await.unwrap();
    anc.publish("$KV.tillit.meta.bGVhZGVyX2xlYXNl", "{\"holder\":\"admin\",\"token\":99,\"expires_at_ms\":99999999999999}".into()).await.unwrap();
    anc.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A message of an admin in the journal would fail its MAC: the chain still verifies.
    records(&e);
    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "-n", "200", "--json"]);
    assert!(!stdout(&out).contains("\"seq\":999"), "the journal took nothing from an admin");
    let (lead, token) = leader(&e);
    assert!(lead != "admin" && token < 99, "the lease is the replicas': {lead} {token}");
}

/// Every record of the data dir's sled store.
fn sled_records(e: &Estate) -> Vec<(&'static str, String, Vec<u8>)> {
    use tillit::store::{SledStore, Space, Store};
    let s = SledStore::open(&e.dir.store()).unwrap();
    Space::ALL.iter().flat_map(|sp| s.scan(*sp).unwrap().into_iter().map(move |(k, v)| (sp.as_str(), k, v))).collect()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
