//! Group commit: many writers, one fsync.
//!
//! A writer hands its batch to [`GroupCommit::commit`] and waits. One task applies every batch
//! queued at that moment, makes them durable with a single [`Store::sync`], and then releases all
//! their writers: a reply is only sent once its record is on stable storage, and the fsync cost is
//! shared by everyone who arrived while the previous one ran.

use super::{Batch, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most batches folded into one sync.
const MAX_GROUP: usize = 1024;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the committer task.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<(Batch, Waiter)>,
}

impl GroupCommit {
    /// Start the committer for `store` (on the current tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Batch, Waiter)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(item) => group.push(item),
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                let (batches, waiters): (Vec<Batch>, Vec<Waiter>) = group.into_iter().unzip();
                let results = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let n = batches.len();
                    let mut results: Vec<Result<(), String>> = Vec::with_capacity(batches.len());
                    for b in batches {
                        results.push(store.apply(b).map_err(|e| e.to_string()));
                    }
                    let applied = started.elapsed();
                    let synced = store.sync();
                    tracing::trace!(group = n, ?applied, total = ?started.elapsed(), "group commit");
                    if let Err(e) = synced {
                        let msg = e.to_string();
                        for r in results.iter_mut() {
                            *r = Err(msg.clone());
                        }
                    }
                    results
                })
                .await
                .unwrap_or_else(|e| vec![Err(format!("committer failed: {e}")); waiters.len()]);
                for (w, r) in waiters.into_iter().zip(results) {
                    let _ = w.send(r);
                }
            }
        });
        GroupCommit { tx }
    }

    /// Apply `batch` and return once it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((batch, tx)).map_err(|_| StoreError::Backend("group committer stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e)),
            Err(_) => Err(StoreError::Backend("group committer stopped".into())),
        }
    }

    /// Make writes applied outside a batch (compare-and-swap) durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit(Batch::new()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SledStore, Space};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let gc = GroupCommit::start(store.clone());
        let mut tasks = vec![];
        for i in 0..200 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = Batch::new();
                b.put(Space::Identities, format!("u{i:03}"), vec![i as u8]);
                gc.commit(b).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.count(Space::Identities).unwrap(), 200);
    }
}
