//! A backend wrapper that makes chosen commits fail the ways FoundationDB
//! commits fail: for tests of the retry loop and of the record layer's
//! idempotency, over any backend (the conformance suite runs
//! `unknown_result_is_idempotent` on each).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use super::layer::{Layered, TxHooks};
use super::{KvBackend, KvTransaction, TRANSACTION_DURATION_MS_MAX};
use crate::StorageError;

/// A fault to inject into upcoming commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with `not_committed` (1020); nothing is applied.
    NotCommitted,
    /// Apply the writes, then report `commit_unknown_result` (1021).
    CommitUnknownResult,
    /// Fail with `transaction_too_old` (1007); nothing is applied.
    TransactionTooOld,
    /// Fail as a commit that got no answer within the hang guard
    /// ([`StorageError::CommitTimedOut`]); nothing is applied.
    CommitTimedOut,
}

/// A handle that makes upcoming commits of a [`FaultyKv`] fail.
///
/// Faults are consumed in order, one per commit of a transaction that has
/// writes (read-only commits do not consume faults).
#[derive(Clone, Default)]
pub struct FaultInjector {
    queue: Arc<Mutex<VecDeque<Option<Fault>>>>,
}

impl FaultInjector {
    /// Makes the next `n` write commits fail with `fault`, after any
    /// faults already queued.
    pub fn fail_next_commits(&self, fault: Fault, n: usize) {
        let mut q = self.queue.lock();
        q.extend(std::iter::repeat_n(Some(fault), n));
    }

    /// Lets the next `n` write commits (after any already queued entries)
    /// through unharmed; combine with [`FaultInjector::fail_next_commits`]
    /// to fail a commit in the middle of a sequence.
    pub fn pass_next_commits(&self, n: usize) {
        self.queue.lock().extend(std::iter::repeat_n(None, n));
    }

    /// Entries (faults and passes) still queued.
    pub fn pending(&self) -> usize {
        self.queue.lock().len()
    }

    /// Drops every queued fault.
    pub fn clear(&self) {
        self.queue.lock().clear();
    }

    fn take(&self) -> Option<Fault> {
        self.queue.lock().pop_front().flatten()
    }
}

/// `inner`, whose write commits take their fate from a [`FaultInjector`].
pub struct FaultyKv {
    inner: Arc<dyn KvBackend>,
    faults: FaultInjector,
}

impl FaultyKv {
    /// Wraps `inner`; returns the wrapper and the handle that injects.
    pub fn new(inner: Arc<dyn KvBackend>) -> (FaultyKv, FaultInjector) {
        let faults = FaultInjector::default();
        (
            FaultyKv {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }
}

impl KvBackend for FaultyKv {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn key_prefix_len(&self) -> usize {
        self.inner.key_prefix_len()
    }

    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError> {
        Ok(Layered::boxed(
            self.inner.begin(write)?,
            Faults(self.faults.clone()),
        ))
    }
}

/// A transaction's hooks: its write commit takes the next queued fault.
struct Faults(FaultInjector);

impl TxHooks for Faults {
    fn commit(&mut self, wrote: bool, inner: &mut dyn KvTransaction) -> Result<(), StorageError> {
        // Read-only commits do not consume faults.
        let fault = if wrote { self.0.take() } else { None };
        match fault {
            None => inner.commit(),
            Some(Fault::NotCommitted) => Err(StorageError::NotCommitted),
            Some(Fault::TransactionTooOld) => Err(StorageError::TransactionTooOld {
                limit_ms: TRANSACTION_DURATION_MS_MAX,
            }),
            Some(Fault::CommitTimedOut) => Err(StorageError::CommitTimedOut {
                timeout_ms: TRANSACTION_DURATION_MS_MAX * 3,
            }),
            Some(Fault::CommitUnknownResult) => {
                inner.commit()?;
                Err(StorageError::CommitUnknownResult)
            }
        }
    }

    fn on_error(
        &mut self,
        error: &StorageError,
        inner: &mut dyn KvTransaction,
    ) -> Result<bool, StorageError> {
        // An injected fault left the inner transaction uncommitted (or
        // committed): never reuse it.
        let _ = (error, inner);
        Ok(false)
    }
}
