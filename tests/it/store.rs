//! The JetStream KV store backend against a real nats-server with JetStream: two stores on one
//! bucket behave as two replicas would (read-your-writes, each other's writes through the watch,
//! compare-and-set refusals instead of lost updates), and a store opened later loads what is there.

use crate::harness::*;
use std::sync::Arc;
use std::time::Duration;
use tillit::store::{Batch, JetStreamStore, Space, Store, StoreError};

/// A plain nats-server with JetStream on a free port, its store in `dir`.
fn jetstream_server(dir: &std::path::Path) -> NatsServer {
    let port = free_port();
    let conf = dir.join("js.conf");
    let store = serde_json::to_string(dir.join("js").to_str().unwrap()).unwrap();
    std::fs::write(&conf, format!("listen: \"127.0.0.1:{port}\"\nserver_name: store-test\njetstream {{ store_dir: {store} }}\n")).unwrap();
    NatsServer::start(&conf, port)
}

fn open(url: &str, bucket: &str) -> JetStreamStore {
    let url = url.to_string();
    JetStreamStore::open(Box::new(move || Box::pin(async move { async_nats::connect(url).await.map_err(|e| e.to_string()) })), bucket, 1)
        .expect("open the KV store")
}

fn put(s: &dyn Store, space: Space, key: &str, value: &str) -> Result<(), StoreError> {
    let mut b = Batch::new();
    b.put(space, key, value.as_bytes().to_vec());
    s.apply(b)
}

fn text(s: &dyn Store, space: Space, key: &str) -> Option<String> {
    s.get(space, key).unwrap().map(|v| String::from_utf8(v).unwrap())
}

/// A change computed from a record outside the journal names the revision it read (or that it
/// creates the record): another replica's write in between, even one this replica's watch has
/// already delivered by the time it writes, refuses it instead of being overwritten.
#[test]
fn a_write_naming_what_it_read_never_lands_over_a_change_made_since() {
    use tillit::store::Expect;
    let tmp = tempfile::tempdir().unwrap();
    let server = jetstream_server(tmp.path());
    let a = open(&server.url(), "TILLIT_TEST");
    let b = open(&server.url(), "TILLIT_TEST");
    let put_expect = |s: &dyn Store, key: &str, value: &str, expect: Option<Expect>| {
        let mut batch = Batch::new();
        batch.put_json_expect(Space::Accounts, key, &value, expect).unwrap();
        s.apply(batch)
    };
    let json = |s: &dyn Store, key: &str| s.get(Space::Accounts, key).unwrap().map(|v| serde_json::from_slice::<String>(&v).unwrap());

    // Both replicas find no record and create it; a's create is seen by b before b writes.
    assert!(b.get_rev(Space::Accounts, "acme-prod").unwrap().is_none());
    put_expect(&a, "acme-prod", "from a", Some(Expect::Absent)).unwrap();
    wait_for(Duration::from_secs(5), || json(&b, "acme-prod").is_some()).expect("b sees a's create");
    assert!(matches!(put_expect(&b, "acme-prod", "from b", Some(Expect::Absent)), Err(StoreError::Conflict(_))), "b's create is refused");
    // Seen or not yet seen by c when it writes (its mirror or the bucket refuses it).
    let c = open(&server.url(), "TILLIT_TEST");
    put_expect(&a, "acme-dev", "from a", Some(Expect::Absent)).unwrap();
    match put_expect(&c, "acme-dev", "from c", Some(Expect::Absent)) {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("c's create over a's must be refused: {other:?}"),
    }
    assert_eq!(json(&a, "acme-prod").as_deref(), Some("from a"));
    assert_eq!(json(&a, "acme-dev").as_deref(), Some("from a"));

    // b reads at a revision; a changes the record; b's watch delivers it; b's change computed
    // from what it read is refused (writing "as seen now" would have landed over a's).
    wait_for(Duration::from_secs(5), || json(&b, "acme-prod").as_deref() == Some("from a")).unwrap();
    let (_, rev) = b.get_rev(Space::Accounts, "acme-prod").unwrap().expect("b reads the record");
    assert!(rev.is_some(), "a replicated store says which revision it read");
    put_expect(&a, "acme-prod", "a's revocation", None).unwrap();
    wait_for(Duration::from_secs(5), || json(&b, "acme-prod").as_deref() == Some("a's revocation")).expect("b sees a's change");
    let refused = put_expect(&b, "acme-prod", "b's change from the old read", rev.map(Expect::Revision));
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    assert_eq!(json(&a, "acme-prod").as_deref(), Some("a's revocation"), "a's change stays");
    // Read again, b's change lands.
    let (_, rev) = b.get_rev(Space::Accounts, "acme-prod").unwrap().unwrap();
    put_expect(&b, "acme-prod", "b's change", rev.map(Expect::Revision)).unwrap();
    wait_for(Duration::from_secs(5), || json(&a, "acme-prod").as_deref() == Some("b's change")).expect("a sees b's change");
}

#[test]
fn two_replicas_share_one_bucket_without_losing_an_update() {
    let tmp = tempfile::tempdir().unwrap();
    let server = jetstream_server(tmp.path());
    let a = open(&server.url(), "TILLIT_TEST");
    let b = open(&server.url(), "TILLIT_TEST");

    // Read-your-writes at once; the other replica sees it through its watch.
    put(&a, Space::Identities, "UALICE", "v1").unwrap();
    assert_eq!(text(&a, Space::Identities, "UALICE").as_deref(), Some("v1"));
    wait_for(Duration::from_secs(5), || text(&b, Space::Identities, "UALICE").as_deref() == Some("v1")).expect("b sees a's write");

    // A write from a stale view is refused, not applied over the newer value. b's view is stale
    // for the few milliseconds its watch takes to deliver a's write: try until that is caught.
    let mut conflicts = 0;
    for i in 0..20 {
        let from_a = format!("a{i}");
        put(&a, Space::Identities, "UALICE", &from_a).unwrap();
        match put(&b, Space::Identities, "UALICE", &format!("b{i}")) {
            Err(StoreError::Conflict(_)) => {
                conflicts += 1;
                assert_eq!(text(&a, Space::Identities, "UALICE"), Some(from_a.clone()), "the refused write changed nothing");
                wait_for(Duration::from_secs(5), || text(&b, Space::Identities, "UALICE") == Some(from_a.clone())).expect("b catches up");
            }
            // b had already seen a's write: its write lands on top of it, and a sees it.
            Ok(()) => {
                wait_for(Duration::from_secs(5), || text(&a, Space::Identities, "UALICE") == Some(format!("b{i}"))).expect("a sees b's write");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(conflicts > 0, "no stale write was ever refused in 20 races");
    // Once b has seen the latest, b may write on top of it.
    wait_for(Duration::from_secs(5), || text(&b, Space::Identities, "UALICE") == text(&a, Space::Identities, "UALICE")).unwrap();
    put(&b, Space::Identities, "UALICE", "v3-from-b").unwrap();
    wait_for(Duration::from_secs(5), || text(&a, Space::Identities, "UALICE").as_deref() == Some("v3-from-b")).expect("a sees b's write");

    // Compare-and-set: create only if absent, replace only the value seen.
    assert!(a.compare_and_swap(Space::Meta, "lease", None, Some(b"a".to_vec())).unwrap());
    assert!(!a.compare_and_swap(Space::Meta, "lease", None, Some(b"a-again".to_vec())).unwrap(), "exists already");
    wait_for(Duration::from_secs(5), || text(&b, Space::Meta, "lease").as_deref() == Some("a")).unwrap();
    assert!(!b.compare_and_swap(Space::Meta, "lease", Some(b"someone-else"), Some(b"b".to_vec())).unwrap(), "wrong old value");
    assert!(b.compare_and_swap(Space::Meta, "lease", Some(b"a"), Some(b"b".to_vec())).unwrap());
    // a still holds "a" until its watch delivers b's swap; either way a cannot swap "a" out now.
    assert!(!a.compare_and_swap(Space::Meta, "lease", Some(b"a"), Some(b"a2".to_vec())).unwrap(), "a's swap over b's must fail");
    wait_for(Duration::from_secs(5), || text(&a, Space::Meta, "lease").as_deref() == Some("b")).expect("a sees b's swap");

    // Keys of every shape, scans in key order within a space, deletes.
    for k in ["site/east", "site/west", "agent/UXYZ", "site/", ""] {
        put(&a, Space::Sites, k, k).unwrap();
    }
    put(&a, Space::SecretValues, "acme/shop/prod/db#3", "sealed").unwrap();
    let sites: Vec<String> = a.scan_prefix(Space::Sites, "site/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(sites, ["site/", "site/east", "site/west"]);
    assert_eq!(a.count(Space::Sites).unwrap(), 5);
    assert_eq!(a.scan(Space::Sites).unwrap().first().map(|(k, _)| k.as_str()), Some(""));
    let mut del = Batch::new();
    del.delete(Space::Sites, "site/west");
    a.apply(del).unwrap();
    assert_eq!(text(&a, Space::Sites, "site/west"), None);
    wait_for(Duration::from_secs(5), || b.count(Space::Sites).unwrap() == 4 && text(&b, Space::Sites, "site/west").is_none()).expect("b sees the delete");

    // A store opened later (a new replica, a restart) loads what is there, deletes included.
    let c = open(&server.url(), "TILLIT_TEST");
    assert_eq!(text(&c, Space::Identities, "UALICE").as_deref(), Some("v3-from-b"));
    assert_eq!(text(&c, Space::SecretValues, "acme/shop/prod/db#3").as_deref(), Some("sealed"));
    assert_eq!(text(&c, Space::Sites, "site/west"), None);
    assert_eq!(c.count(Space::Sites).unwrap(), 4);
    // A batch writing one key twice applies both in order.
    let mut twice = Batch::new();
    twice.put(Space::Tokens, "T1", b"first".to_vec()).put(Space::Tokens, "T1", b"second".to_vec());
    c.apply(twice).unwrap();
    assert_eq!(text(&c, Space::Tokens, "T1").as_deref(), Some("second"));
    c.sync().unwrap();
    drop(server);
}

#[test]
fn values_sealed_by_the_vault_reach_the_bucket_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = jetstream_server(tmp.path());
    let store: Arc<dyn Store> = Arc::new(open(&server.url(), "TILLIT_SEALED"));
    let vault = tillit::store::Vault::new(store.clone(), tillit::crypto::MasterKey::generate().unwrap());
    let mut b = Batch::new();
    vault.put_sealed(&mut b, Space::Keys, "operator", b"SOOPERSECRETSEED").unwrap();
    store.apply(b).unwrap();
    assert_eq!(vault.get_sealed(Space::Keys, "operator").unwrap().as_deref().map(|v| v.to_vec()), Some(b"SOOPERSECRETSEED".to_vec()));
    // What another reader of the bucket sees: the sealed bytes only.
    let raw = open(&server.url(), "TILLIT_SEALED").get(Space::Keys, "operator").unwrap().expect("the record");
    assert!(!raw.windows(16).any(|w| w == b"SOOPERSECRETSEED"), "the bucket holds the seed in clear");
}

/// Replicas racing for the leader lease on one bucket: at every moment at most one leads, a
/// takeover after expiry brings the next fencing token, and the deposed leader is fenced off.
#[test]
fn replicas_on_one_bucket_agree_on_one_leader() {
    use tillit::estate::lease::{holds, lease_step};
    let tmp = tempfile::tempdir().unwrap();
    let server = jetstream_server(tmp.path());
    let stores: Vec<Arc<JetStreamStore>> = (0..3).map(|_| Arc::new(open(&server.url(), "TILLIT_LEASE"))).collect();
    const TTL: i64 = 3_000;
    let race = |now_ms: i64| -> Vec<bool> {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                std::thread::spawn(move || lease_step(s.as_ref(), &format!("r{i}"), now_ms, TTL).unwrap().leader)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    // Three replicas start at once: one leads.
    let first = race(0);
    assert_eq!(first.iter().filter(|l| **l).count(), 1, "{first:?}");
    let leader = first.iter().position(|l| *l).unwrap();
    let name = format!("r{leader}");
    wait_for(Duration::from_secs(5), || stores.iter().all(|s| holds(s.as_ref(), &name, 1, 100).unwrap())).expect("every replica sees one lease");
    // While it renews, nobody else leads.
    assert!(lease_step(stores[leader].as_ref(), &name, 1_500, TTL).unwrap().leader);
    wait_for(Duration::from_secs(5), || stores.iter().all(|s| holds(s.as_ref(), &name, 1, 4_000).unwrap())).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in &others {
        assert!(!lease_step(stores[*i].as_ref(), &format!("r{i}"), 4_000, TTL).unwrap().leader);
    }
    // The leader stalls past its lease: the others race for it; one wins with token 2.
    let handles: Vec<_> = others
        .iter()
        .map(|i| {
            let (s, me) = (stores[*i].clone(), format!("r{i}"));
            std::thread::spawn(move || (me.clone(), lease_step(s.as_ref(), &me, 5_000, TTL).unwrap()))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter(|(_, v)| v.leader).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (new_name, view) = winners[0];
    assert_eq!(view.token(), Some(2));
    wait_for(Duration::from_secs(5), || holds(stores[leader].as_ref(), new_name, 2, 5_100).unwrap()).expect("the old leader sees the takeover");
    assert!(!holds(stores[leader].as_ref(), &name, 1, 5_100).unwrap(), "the deposed leader's token no longer acts");
    assert!(!lease_step(stores[leader].as_ref(), &name, 5_100, TTL).unwrap().leader, "and it cannot take the lease back while it lives");
}

/// `store migrate`'s core: an estate `tillit init` made on sled is copied into a JetStream bucket,
/// checked, and opens from there with the same master key (the sled store is left as it was).
#[test]
fn an_estate_copied_from_sled_opens_from_jetstream() {
    let e = Estate::init("migrate.example");
    let dir = tillit::layout::DataDir::new(e.data());
    let server = jetstream_server(e.tmp.path());
    let clock: tillit::clock::SharedClock = Arc::new(tillit::clock::SystemClock);
    let (identities, ca, copied) = {
        let sled: Arc<dyn Store> = Arc::new(tillit::store::SledStore::open(&dir.store()).unwrap());
        let before = tillit::Estate::open(dir.clone(), clock.clone()).map(|_| ()).err();
        assert!(before.is_some(), "the sled store is locked while it is open here");
        let js = open(&server.url(), "TILLIT_MIGRATE");
        let copied = tillit::store::copy_all(sled.as_ref(), &js, |_, _| {}).unwrap();
        let config = tillit::config::Config::load(&dir.config_file()).unwrap();
        let master = tillit::crypto::MasterKey::load(dir.root()).unwrap();
        let from_sled = tillit::Estate::open_with(dir.clone(), config, sled, master, clock.clone()).unwrap();
        (from_sled.identities().unwrap().len(), from_sled.ca_fingerprint(), copied)
    };
    assert!(copied.total() > 10, "{copied:?}");
    // A fresh opener of the bucket (another replica) sees the estate.
    let js: Arc<dyn Store> = Arc::new(open(&server.url(), "TILLIT_MIGRATE"));
    let config = tillit::config::Config::load(&dir.config_file()).unwrap();
    let master = tillit::crypto::MasterKey::load(dir.root()).unwrap();
    let estate = tillit::Estate::open_with(dir.clone(), config, js, master, clock.clone()).expect("the estate opens from the bucket");
    assert_eq!(estate.trust_domain(), "migrate.example");
    assert_eq!(estate.identities().unwrap().len(), identities);
    assert_eq!(estate.ca_fingerprint(), ca);
    // The wrong master key does not open it.
    let config = tillit::config::Config::load(&dir.config_file()).unwrap();
    let js2: Arc<dyn Store> = Arc::new(open(&server.url(), "TILLIT_MIGRATE"));
    let wrong = tillit::Estate::open_with(dir.clone(), config, js2, tillit::crypto::MasterKey::generate().unwrap(), clock);
    assert!(matches!(wrong, Err(tillit::EstateError::WrongMasterKey(_))), "{:?}", wrong.err());
    // The source is untouched and still opens.
    drop(estate);
    tillit::Estate::open(dir, Arc::new(tillit::clock::SystemClock)).expect("the sled estate still opens");
}

/// A page from a cursor (`tillit list --after`): the JetStream store hands out its mirror a
/// chunk at a time, so a visit crosses chunk boundaries without losing or repeating a key, and
/// sees what another replica wrote (through the watch) in its place.
#[test]
fn a_visit_after_a_cursor_crosses_chunks_in_key_order() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = jetstream_server(tmp.path());
    let (a, b) = (open(&nats.url(), "order"), open(&nats.url(), "order"));
    let mut batch = Batch::new();
    for i in 0..700 {
        batch.put(Space::IdentityOrder, format!("spiffe://t/x/{i:04} U{i}"), b"1".to_vec());
    }
    a.commit(batch).unwrap();
    put(&a, Space::Identities, "spiffe://t/x/0500 U500z", "another space").unwrap();
    let keys = |s: &JetStreamStore, after: &str, stop: usize| {
        let mut seen = vec![];
        s.visit_after(Space::IdentityOrder, "", after, &mut |k, _| {
            seen.push(k.to_string());
            seen.len() < stop
        })
        .unwrap();
        seen
    };
    let want: Vec<String> = (0..700).map(|i| format!("spiffe://t/x/{i:04} U{i}")).collect();
    assert_eq!(keys(&a, "", usize::MAX), want, "every key once, in order, across three chunks");
    assert_eq!(keys(&a, &want[99], usize::MAX), want[100..], "strictly after the cursor");
    assert_eq!(keys(&a, &want[99], 300), want[100..400], "until told to stop");
    // The other replica, once its watch brought the keys.
    assert!(wait_for(Duration::from_secs(10), || b.count(Space::IdentityOrder).unwrap() == 700).is_some());
    assert_eq!(keys(&b, &want[254], 2), want[255..257], "at a chunk's edge");
}
