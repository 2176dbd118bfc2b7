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
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the committer thread over `store`.
    pub fn start(store: Store) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
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
        Committer { tx }
    }

    /// Commits `req` (with whatever else is pending) and returns the new
    /// head sequence number.
    pub async fn commit(&self, req: CommitRequest) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }
}
