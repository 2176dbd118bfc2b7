//! Group commit: one thread drains every pending snapshot commit into one
//! storage transaction, so many actors' durable turns share a sync.

use std::sync::mpsc;

use tern_storage::{CommitRequest, Store};
use tokio::sync::oneshot;

use crate::error::{Result, RuntimeError};

/// Most commits folded into one group.
pub const GROUP_COMMIT_REQUESTS_MAX: usize = 256;

type Job = (CommitRequest, oneshot::Sender<Result<u64>>);

/// The path between a POP and its store, as the inline committer sees
/// it. Production has nothing here (the threaded committer talks to the
/// store directly); a simulator delays commits in flight, holds them while
/// the POP is paused, and cuts them off in a partition.
#[async_trait::async_trait]
pub trait StoreLink: Send + Sync {
    /// A commit request travels to the store. An error: it never got
    /// there (nothing was applied).
    async fn send(&self) -> Result<()>;
    /// The store's answer travels back. An error: the answer was lost (the
    /// commit may have been applied: the caller sees
    /// `commit_unknown_result`).
    async fn answer_back(&self) -> Result<()>;
}

/// Handle to the committer thread. Its queue needs no separate bound:
/// each activation has at most one commit in flight, so it holds at most
/// `activations_max` requests.
#[derive(Clone)]
pub struct Committer {
    /// `None`: commit inline on the caller's task (a simulator, where no
    /// other thread may run).
    tx: Option<mpsc::Sender<Job>>,
    store: Store,
    /// Inline only: the simulated way to the store.
    link: Option<std::sync::Arc<dyn StoreLink>>,
}

impl Committer {
    /// Starts the committer thread over `store`.
    pub fn start(store: Store) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = store.clone();
        std::thread::Builder::new()
            .name("tern-committer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < GROUP_COMMIT_REQUESTS_MAX {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let (reqs, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
                    let results = store.commit_batch(&reqs);
                    metrics::counter!("tern_commits_total").increment(reqs.len() as u64);
                    metrics::histogram!("tern_group_commit_size").record(reqs.len() as f64);
                    for (reply, res) in replies.into_iter().zip(results) {
                        let _ = reply.send(res.map_err(RuntimeError::from));
                    }
                }
            })
            .expect("spawn committer thread");
        Committer {
            tx: Some(tx),
            store: handle,
            link: None,
        }
    }

    /// A committer without a thread: each commit runs inline, alone,
    /// through `link` when there is one.
    pub fn inline(store: Store, link: Option<std::sync::Arc<dyn StoreLink>>) -> Committer {
        Committer {
            tx: None,
            store,
            link,
        }
    }

    /// Commits `req` (with whatever else is pending) and returns the new
    /// head sequence number.
    pub async fn commit(&self, req: CommitRequest) -> Result<u64> {
        let Some(queue) = &self.tx else {
            if let Some(link) = &self.link {
                link.send().await?;
            }
            let r = self
                .store
                .commit_batch(std::slice::from_ref(&req))
                .pop()
                .expect("one result per request");
            if let Some(link) = &self.link
                && let Err(e) = link.answer_back().await
            {
                tracing::debug!(error = %e, "a commit's answer was lost");
                return Err(tern_storage::StorageError::CommitUnknownResult.into());
            }
            return r.map_err(RuntimeError::from);
        };
        let (tx, rx) = oneshot::channel();
        queue
            .send((req, tx))
            .map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }
}
