//! The journal: the writer's async face, group commit on its own thread.

use super::{Append, AuditError, Entry, AUDIT_FILE};
use std::sync::mpsc;
use tokio::sync::oneshot;

// === the journal (async face) ===

/// Why a group was not written.
enum Failed {
    Conflict,
    Unavailable(String),
    /// The data dir took no more writes: full, or read-only.
    NoSpace(String),
    Other(String),
}

/// Whether an error says the disk took no more writes (ENOSPC, EROFS, a quota).
fn no_space(e: &AuditError) -> bool {
    let text = e.to_string();
    ["No space left on device", "Read-only file system", "Disk quota exceeded", "os error 28", "os error 30", "os error 122"]
        .iter()
        .any(|m| text.contains(m))
}

/// Entries to write and, unless relaxed, who waits for them to be durable.
type Job = (Vec<Entry>, Option<oneshot::Sender<Result<Vec<u64>, Failed>>>);

/// Write one group and answer its waiters. After a conflict (another replica's change came
/// first), the entries without store writes are written again on the new head; the others'
/// requests are served again by their callers.
fn write_group(writer: &mut impl Append, jobs: Vec<Job>, retry: usize) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.0.len()).collect();
    let relaxed: Vec<Option<Vec<Entry>>> =
        jobs.iter().map(|j| j.0.iter().all(|e| e.batch.is_empty()).then(|| j.0.clone())).collect();
    let (entries, waiters): (Vec<Vec<Entry>>, Vec<Option<oneshot::Sender<_>>>) = jobs.into_iter().unzip();
    match writer.append(entries.into_iter().flatten().collect()) {
        Ok(seqs) => {
            let mut it = seqs.into_iter();
            for (w, n) in waiters.into_iter().zip(sizes) {
                let mine: Vec<u64> = it.by_ref().take(n).collect();
                if let Some(w) = w {
                    let _ = w.send(Ok(mine));
                }
            }
        }
        Err(AuditError::Conflict) if retry < 5 => {
            let mut again = Vec::new();
            for (w, copy) in waiters.into_iter().zip(relaxed) {
                match copy {
                    Some(entries) => again.push((entries, w)),
                    None => {
                        if let Some(w) = w {
                            let _ = w.send(Err(Failed::Conflict));
                        }
                    }
                }
            }
            if !again.is_empty() {
                write_group(writer, again, retry + 1);
            }
        }
        Err(e) => {
            tracing::error!("audit write failed: {e}");
            for w in waiters.into_iter().flatten() {
                let _ = w.send(Err(match &e {
                    AuditError::Conflict => Failed::Conflict,
                    AuditError::Unavailable(m) => Failed::Unavailable(m.clone()),
                    e if no_space(e) => Failed::NoSpace(e.to_string()),
                    _ => Failed::Other(e.to_string()),
                }));
            }
        }
    }
}

/// How long relaxed records (reads, refusals) may wait to share an fsync.
const RELAXED_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
/// How long a group waits for the commits of requests already being served ([`Journal::expecting`])
/// before its fsync. Only while some are expected: a lone request never waits.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_micros(1500);

tokio::task_local! {
    /// The request this task serves, while it has not committed yet ([`Journal::expecting`]).
    static EXPECTED: Expected;
}

/// A request that will probably commit: counted in [`Journal`]'s `expected` until the journal
/// received its first record (the journal takes it off then, so a record on its way is still
/// waited for), or until it ends without one.
struct Expected {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    live: std::cell::Cell<bool>,
}

impl Expected {
    fn done(&self) {
        if self.live.replace(false) {
            self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Its record goes to the journal counting `count`: whether that journal takes it off the
    /// count when it receives the record (the first record of this request only).
    fn hand_over(&self, count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> bool {
        std::sync::Arc::ptr_eq(&self.count, count) && self.live.replace(false)
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.done();
    }
}

/// After this long without a record, the writer finishes what it put off ([`Append::idle`]).
const IDLE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Handle to the journal thread: group commit of audit records and their store writes.
#[derive(Clone)]
pub struct Journal {
    /// Jobs, each with whether it takes an expected request off the count.
    tx: mpsc::Sender<(Job, bool)>,
    observer: Option<Observer>,
    /// Committed changes that wrote identity records (what `status` counts moves with them).
    identity_changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Requests being served that will probably commit and have not yet ([`Journal::expecting`]).
    expected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Told of the writes of every committed change that pass its filter, once they are durable.
#[derive(Clone)]
pub struct Observer {
    pub filter: fn(&crate::store::Op) -> bool,
    pub notify: std::sync::Arc<dyn Fn(Vec<crate::store::Op>) + Send + Sync>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("observed", &self.observer.is_some()).finish_non_exhaustive()
    }
}

impl Journal {
    /// Run `writer` on its own thread.
    pub fn start(writer: impl Append) -> Self {
        Self::start_waiting(writer, COMMIT_WAIT)
    }

    /// [`Journal::start`], a group waiting at most `commit_wait` for expected commits.
    fn start_waiting(mut writer: impl Append, commit_wait: std::time::Duration) -> Self {
        let (tx, rx) = mpsc::channel::<(Job, bool)>();
        let max_group = writer.max_group();
        let expected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let coming = expected.clone();
        let spawned = std::thread::Builder::new().name("tillit-audit".into()).spawn(move || {
            // A job has arrived: the request it came from is no longer expected.
            let arrived = |(j, expected): (Job, bool)| {
                if expected {
                    coming.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
                j
            };
            loop {
                let first = match rx.recv_timeout(IDLE_AFTER).map(arrived) {
                    Ok(j) => j,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        writer.idle();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let mut urgent = first.1.is_some();
                let mut jobs = vec![first];
                let mut count = jobs[0].0.len();
                // Relaxed records wait a little to share an fsync, unless someone is waiting.
                let deadline = std::time::Instant::now() + RELAXED_WAIT;
                while count < max_group {
                    match rx.try_recv().map(arrived) {
                        Ok(j) => {
                            urgent |= j.1.is_some();
                            count += j.0.len();
                            jobs.push(j);
                        }
                        Err(_) if !urgent && std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_micros(500));
                        }
                        Err(_) => break,
                    }
                }
                // Requests being served will commit in a moment: one fsync for them all costs
                // less than one each (the first waits at most COMMIT_WAIT).
                let wait_until = std::time::Instant::now() + commit_wait;
                while count < max_group && coming.load(std::sync::atomic::Ordering::Acquire) > 0 {
                    let left = wait_until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left).map(arrived) {
                        Ok(j) => {
                            count += j.0.len();
                            jobs.push(j);
                        }
                        Err(_) => break,
                    }
                }
                // [`Journal::settle`] calls write nothing; they are answered after the group
                // and the writer's idle work.
                let (settles, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.0.is_empty());
                if !jobs.is_empty() {
                    write_group(&mut writer, jobs, 0);
                }
                if !settles.is_empty() {
                    writer.idle();
                    for w in settles.into_iter().filter_map(|j| j.1) {
                        let _ = w.send(Ok(Vec::new()));
                    }
                }
            }
            writer.idle();
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the audit thread: {e}");
        }
        Journal { tx, observer: None, identity_changes: Default::default(), expected }
    }

    /// Send `job`; the first record of an expected request takes it off the count when the
    /// journal receives it.
    fn send(&self, job: Job) -> Result<(), mpsc::SendError<(Job, bool)>> {
        let expected = EXPECTED.try_with(|e| e.hand_over(&self.expected)).unwrap_or(false);
        let sent = self.tx.send((job, expected));
        if sent.is_err() && expected {
            self.expected.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        sent
    }

    /// Run `serving` (a request that will probably commit) as expected: until it commits or
    /// ends, the group being written waits for it a little ([`COMMIT_WAIT`]) to share its fsync.
    pub async fn expecting<F: std::future::Future>(&self, serving: F) -> F::Output {
        self.expected.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let e = Expected { count: self.expected.clone(), live: std::cell::Cell::new(true) };
        EXPECTED.scope(e, serving).await
    }

    /// Tell `observer` of every committed change's writes (the OCSP answer publisher).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Write `entries` and their store writes; returns once they are durable.
    /// [`AuditError::Conflict`]: another replica changed the estate first; compute the change again.
    pub async fn commit(&self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
        let watched: Vec<crate::store::Op> = match &self.observer {
            Some(o) => entries.iter().flat_map(|e| e.batch.ops.iter()).filter(|op| (o.filter)(op)).cloned().collect(),
            None => Vec::new(),
        };
        let identities = entries.iter().flat_map(|e| e.batch.ops.iter()).any(|op| op.space == crate::store::Space::Identities);
        let (tx, rx) = oneshot::channel();
        self.send((entries, Some(tx))).map_err(|_| AuditError::Stopped)?;
        match rx.await {
            Ok(Ok(s)) => {
                if identities {
                    self.identity_changes.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
                if let (Some(o), false) = (&self.observer, watched.is_empty()) {
                    (o.notify)(watched);
                }
                Ok(s)
            }
            Ok(Err(Failed::Conflict)) => Err(AuditError::Conflict),
            Ok(Err(Failed::Unavailable(m))) => Err(AuditError::Unavailable(m)),
            Ok(Err(Failed::NoSpace(m))) => Err(AuditError::NoSpace(m)),
            Ok(Err(Failed::Other(e))) => Err(AuditError::Io { path: AUDIT_FILE.into(), source: std::io::Error::other(e) }),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Wait until what was recorded before is written and the writer finished what it put off
    /// (the head anchor names the last record). At a clean stop.
    pub async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(((Vec::new(), Some(tx)), false)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Record without waiting (reads, refusals: not changes): the entry shares the next fsync,
    /// at most a few milliseconds later. Failures are logged by the journal.
    pub fn record_relaxed(&self, entry: Entry) {
        if entry.batch.is_empty() {
            // This request's record (without a commit): the group need not wait for it after.
            let _ = self.send((vec![entry], None));
        } else {
            tracing::error!("a record with store writes must be committed, not relaxed; dropped");
        }
    }

    /// How many committed changes through this journal wrote identity records.
    pub fn identity_changes(&self) -> u64 {
        self.identity_changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// [`Journal::commit`] of one entry.
    pub async fn record(&self, entry: Entry) -> Result<u64, AuditError> {
        self.commit(vec![entry]).await.map(|s| s.first().copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, Space};

    /// A writer whose disk fails with `errno` for every write.
    struct Failing(i32);

    impl Append for Failing {
        fn append(&mut self, _entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
            Err(AuditError::Io { path: "audit.jsonl".into(), source: std::io::Error::from_raw_os_error(self.0) })
        }
    }

    fn change() -> Entry {
        let mut b = Batch::new();
        b.put(Space::Meta, "k", b"v".to_vec());
        Entry::ok("tester", "grant", "acme/shop/prod/orders").batch(b)
    }

    #[tokio::test]
    async fn a_full_or_read_only_disk_is_told_apart_from_other_failures() {
        for errno in [28 /* ENOSPC */, 30 /* EROFS */, 122 /* EDQUOT */] {
            let j = Journal::start(Failing(errno));
            assert!(matches!(j.record(change()).await, Err(AuditError::NoSpace(_))), "errno {errno}");
        }
        let j = Journal::start(Failing(5 /* EIO */));
        assert!(matches!(j.record(change()).await, Err(AuditError::Io { .. })));
    }

    /// Counts what the journal asks of its writer; `log` is what it appended, then `idle` marks.
    struct Counting(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Append for Counting {
        fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
            let mut log = self.0.lock().unwrap();
            log.extend(entries.iter().map(|_| "record"));
            Ok((1..=entries.len() as u64).collect())
        }
        fn idle(&mut self) {
            self.0.lock().unwrap().push("idle");
        }
    }

    /// Group sizes the journal appended.
    struct Groups(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);

    impl Append for Groups {
        fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<u64>, AuditError> {
            self.0.lock().unwrap().push(entries.len());
            std::thread::sleep(std::time::Duration::from_millis(2)); // an fsync
            Ok((1..=entries.len() as u64).collect())
        }
    }

    /// Requests being served (expected) share one group: the first commit waits for the
    /// others that are about to commit; one that ends without a commit holds a group up no
    /// longer than the wait; nothing is expected once a request has committed or recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_waits_for_the_commits_of_requests_being_served() {
        use std::sync::atomic::Ordering;
        // A long wait, so that a busy machine cannot make the test pass or fail by timing.
        let wait = std::time::Duration::from_millis(300);
        let groups = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let j = Journal::start_waiting(Groups(groups.clone()), wait);
        let all_in = std::sync::Arc::new(tokio::sync::Barrier::new(4));
        // Four requests being served; the first commits, the other three once its commit was
        // sent (it is no longer expected): without the wait, the first is written alone.
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let (j, all_in) = (j.clone(), all_in.clone());
                tokio::spawn(async move {
                    j.clone()
                        .expecting(async move {
                            all_in.wait().await;
                            if i > 0 {
                                while j.expected.load(Ordering::Acquire) > 3 {
                                    tokio::task::yield_now().await;
                                }
                            }
                            j.record(change()).await.unwrap();
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*groups.lock().unwrap(), vec![4], "one fsync for the four");
        assert_eq!(j.expected.load(Ordering::Acquire), 0, "nothing expected once they committed");
        // A request that ends without committing (refused) delays a group by the wait at most.
        groups.lock().unwrap().clear();
        let (hold_tx, hold_rx) = oneshot::channel::<()>();
        let refused = {
            let j = j.clone();
            tokio::spawn(async move {
                j.expecting(async {
                    let _ = hold_rx.await;
                })
                .await
            })
        };
        while j.expected.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        j.record(change()).await.unwrap();
        let took = started.elapsed();
        assert!(took >= wait, "the group waited for the request being served: {took:?}");
        assert!(took < wait * 3, "and no longer than the wait: {took:?}");
        drop(hold_tx);
        refused.await.unwrap();
        assert_eq!(j.expected.load(Ordering::Acquire), 0, "an ended request is not expected");
        // A relaxed record is the request's record: not expected once the journal has it,
        // while the request goes on.
        j.expecting(async {
            j.record_relaxed(Entry::ok("tester", "read", "x"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while j.expected.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
            assert_eq!(j.expected.load(Ordering::Acquire), 0);
        })
        .await;
    }

    /// What the writer put off is finished when someone settles (after what came before), and
    /// by itself once no record came for a while; a settle alone writes no record.
    #[tokio::test]
    async fn settle_and_quiet_spells_finish_what_the_writer_put_off() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let j = Journal::start(Counting(log.clone()));
        j.record(change()).await.unwrap();
        j.record_relaxed(Entry::ok("tester", "read", "x"));
        j.settle().await;
        {
            let l = log.lock().unwrap();
            assert_eq!(l.iter().filter(|e| **e == "record").count(), 2, "{l:?}");
            assert_eq!(l.last(), Some(&"idle"), "settle returns after the writer's idle: {l:?}");
        }
        log.lock().unwrap().clear();
        j.settle().await;
        assert_eq!(*log.lock().unwrap(), vec!["idle"], "a settle alone writes nothing");
        log.lock().unwrap().clear();
        tokio::time::sleep(IDLE_AFTER * 3).await;
        assert!(log.lock().unwrap().contains(&"idle"), "idle by itself after a quiet spell");
    }
}
