//! What the test layers over a backend ([`super::faulty::FaultyKv`],
//! [`super::latency::LatencyKv`]) share: a transaction that forwards every
//! call to the backend's, remembers whether it wrote, and shows its reads
//! and its commit to the layer's hooks.

use super::{KeyValue, KvTransaction, RangeRead};
use crate::StorageError;

/// A read that went through a layered transaction, with what it returned.
pub(crate) enum Read<'a> {
    /// One key.
    Get,
    /// Several keys in one call.
    GetMany(usize),
    /// One range.
    Range(&'a [KeyValue]),
    /// Several ranges in one call.
    Ranges(&'a [Vec<KeyValue>]),
}

/// A layer's hooks on one transaction.
pub(crate) trait TxHooks: Send {
    /// After each read.
    fn read(&mut self, read: Read<'_>) {
        let _ = read;
    }
    /// The commit: `wrote` says whether the transaction wrote anything.
    fn commit(&mut self, wrote: bool, inner: &mut dyn KvTransaction) -> Result<(), StorageError> {
        let _ = wrote;
        inner.commit()
    }
    /// After a retryable error: see [`KvTransaction::on_error`].
    fn on_error(
        &mut self,
        error: &StorageError,
        inner: &mut dyn KvTransaction,
    ) -> Result<bool, StorageError> {
        inner.on_error(error)
    }
}

/// The backend's transaction `inner`, seen by `hooks`.
pub(crate) struct Layered<H> {
    inner: Box<dyn KvTransaction>,
    wrote: bool,
    hooks: H,
}

impl<H: TxHooks + 'static> Layered<H> {
    /// `inner` with `hooks`, boxed as a transaction.
    pub(crate) fn boxed(inner: Box<dyn KvTransaction>, hooks: H) -> Box<dyn KvTransaction> {
        Box::new(Layered {
            inner,
            wrote: false,
            hooks,
        })
    }
}

impl<H: TxHooks> KvTransaction for Layered<H> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let v = self.inner.get(key)?;
        self.hooks.read(Read::Get);
        Ok(v)
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let v = self.inner.get_many(keys)?;
        self.hooks.read(Read::GetMany(keys.len()));
        Ok(v)
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let kvs = self.inner.get_range(begin, end, limit, reverse)?;
        self.hooks.read(Read::Range(&kvs));
        Ok(kvs)
    }

    fn get_ranges(&mut self, ranges: &[RangeRead]) -> Result<Vec<Vec<KeyValue>>, StorageError> {
        let out = self.inner.get_ranges(ranges)?;
        self.hooks.read(Read::Ranges(&out));
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.wrote = true;
        self.inner.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.wrote = true;
        self.inner.clear(key)
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError> {
        self.wrote = true;
        self.inner.clear_range(begin, end)
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.hooks.commit(self.wrote, self.inner.as_mut())
    }

    fn on_error(&mut self, error: &StorageError) -> Result<bool, StorageError> {
        let reset = self.hooks.on_error(error, self.inner.as_mut())?;
        if reset {
            self.wrote = false;
        }
        Ok(reset)
    }
}
