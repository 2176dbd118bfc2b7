//! Group commit: one thread drains every pending snapshot commit into one
//! storage transaction, so many actors' durable turns share a sync.

use std::sync::mpsc;

use tern_storage::{CommitRequest, Store};
use tokio::sync::oneshot;

use crate::error::{Result, RuntimeError};

/// Most commits folded into one group.
pub const GROUP_COMMIT_REQUESTS_MAX: usize = 256;

type Job = (CommitRequest, oneshot::Sender<Result<u64>>);

/// Handle to the committer thread. Its queue needs no separate bound:
/// each activation has at most one commit in flight, so it holds at most
/// `activations_max` requests.
#[derive(Clone)]
pub struct Committer {
    /// `None`: commit inline on the caller's task (a simulator, where no
    /// other thread may run).
    tx: Option<mpsc::Sender<Job>>,
    store: Store,
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
        }
    }

    /// A committer without a thread: each commit runs inline, alone.
    pub fn inline(store: Store) -> Committer {
        Committer { tx: None, store }
    }

    /// Commits `req` (with whatever else is pending) and returns the new
    /// head sequence number.
    pub async fn commit(&self, req: CommitRequest) -> Result<u64> {
        let Some(queue) = &self.tx else {
            let mut r = self.store.commit_batch(std::slice::from_ref(&req));
            return r
                .pop()
                .expect("one result per request")
                .map_err(RuntimeError::from);
        };
        let (tx, rx) = oneshot::channel();
        queue
            .send((req, tx))
            .map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }
}
