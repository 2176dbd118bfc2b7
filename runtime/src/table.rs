//! The activation table: one entry (a mailbox and a task) per active actor,
//! admission against the POP's budgets, and least-recently-used eviction.
//!
//! Invariants:
//! - an entry leaves the table when its task ends, however it ends (a drop
//!   guard removes it, even after a panic), so a call never loops on a dead
//!   entry;
//! - `count` equals the entries in the table plus admissions in flight,
//!   and never exceeds `activations_max`;
//! - an activation is evicted for room only when it is idle: no turn
//!   running and nothing queued.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::config::TypeConfig;
use crate::directory::Owner;
use crate::error::{Result, RuntimeError};
use crate::flag::Flag;
use crate::node::{CallOutput, CallRequest, Node, NodeInner, Route};
use crate::turnpool::panic_message;

/// Longest time an eviction for room is waited for, ms.
pub const EVICT_WAIT_MS_MAX: u64 = 10_000;

/// Evictions tried for one admission before it gives up.
const ADMIT_EVICTIONS_MAX: usize = 8;

/// A message to an activation.
pub(crate) enum Msg {
    Call {
        req: CallRequest,
        /// Boxed: a route (with its span) is the bulk of the message.
        route: Box<Route>,
        reply: oneshot::Sender<Delivered>,
    },
    /// Persist, release and end.
    Evict,
    /// Drop without persisting or releasing (the lease was lost).
    Abandon,
    /// The memory images and globals as of the last successful turn.
    Images {
        reply: oneshot::Sender<(Vec<Vec<u8>>, Vec<u64>)>,
    },
    /// Fault injection: panic in the activation's task.
    Panic,
    /// Where the actor stands, for an inspector.
    Inspect {
        reply: oneshot::Sender<crate::node::Inspection>,
    },
    /// Fire the activation's alarm `id`. Never sent through a mailbox:
    /// the activation's loop makes it when the alarm is due.
    Alarm(u64),
}

/// What became of a call delivered to an activation.
pub(crate) enum Delivered {
    /// It ran (or failed).
    Reply(Result<CallOutput>),
    /// Another live POP holds the actor: route it there.
    Held(Owner),
    /// The actor moved to the caller's POP because of this call.
    Moved(String),
}

/// One table entry.
pub(crate) struct Handle {
    pub(crate) key: String,
    pub(crate) tx: mpsc::Sender<Msg>,
    /// Set once the activation's task has ended and left the table
    /// (waiters wake in arrival order, as a simulator needs).
    ended: Flag,
    /// A message is being processed.
    pub(crate) busy: AtomicBool,
    /// Last use, ms since the node started.
    pub(crate) last_used_ms: AtomicU64,
    /// Resident bytes this activation accounts for.
    pub(crate) resident: AtomicU64,
    /// The version of its type the activation runs (0 until activated).
    pub(crate) version: AtomicU64,
}

impl Handle {
    /// Idle: open, no message being processed, nothing queued.
    fn idle(&self) -> bool {
        !self.tx.is_closed()
            && !self.busy.load(Ordering::Acquire)
            && self.tx.capacity() == self.tx.max_capacity()
    }

    async fn wait_done(&self) {
        self.ended.wait_until(true).await;
    }
}

/// The table.
#[derive(Default)]
pub(crate) struct Table {
    map: DashMap<String, Arc<Handle>>,
    count: AtomicUsize,
    resident: AtomicU64,
    shedding: AtomicBool,
}

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    /// The active actors of one type, sorted.
    pub(crate) fn keys_of_type(&self, actor_type: &str) -> Vec<String> {
        let prefix = format!("{actor_type}/");
        let mut v: Vec<String> = self
            .map
            .iter()
            .filter(|e| e.key().starts_with(&prefix))
            .map(|e| e.key().clone())
            .collect();
        v.sort();
        v
    }

    /// How many activations of `actor_type` run each version, by version.
    pub(crate) fn versions_of_type(
        &self,
        actor_type: &str,
    ) -> std::collections::BTreeMap<u64, u64> {
        let prefix = format!("{actor_type}/");
        let mut out = std::collections::BTreeMap::new();
        for e in self.map.iter().filter(|e| e.key().starts_with(&prefix)) {
            let v = e.value().version.load(Ordering::Acquire);
            if v > 0 {
                *out.entry(v).or_default() += 1;
            }
        }
        out
    }

    pub(crate) fn resident_bytes(&self) -> u64 {
        self.resident.load(Ordering::Acquire)
    }

    /// Sets what `h` accounts for.
    pub(crate) fn set_resident(&self, h: &Handle, bytes: u64) {
        let old = h.resident.swap(bytes, Ordering::AcqRel);
        if bytes >= old {
            self.resident.fetch_add(bytes - old, Ordering::AcqRel);
        } else {
            self.resident.fetch_sub(old - bytes, Ordering::AcqRel);
        }
    }

    /// Queues `msg` on an active actor without waiting.
    pub(crate) fn send_now(&self, key: &str, msg: Msg) -> bool {
        match self.map.get(key).map(|h| h.clone()) {
            Some(h) => h.tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Ends one activation (`Evict`) and waits for it.
    pub(crate) async fn end_one(&self, key: &str) -> bool {
        let Some(h) = self.map.get(key).map(|h| h.clone()) else {
            return false;
        };
        let _ = h.tx.send(Msg::Evict).await;
        h.wait_done().await;
        true
    }

    /// Sends `msg()` to every activation and waits until each has ended.
    pub(crate) async fn end_all(&self, msg: fn() -> Msg) {
        // In key order: the map's own order depends on a random hasher,
        // and a simulator must see the same order on every run.
        let mut handles: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        handles.sort_by(|a, b| a.key.cmp(&b.key));
        for h in &handles {
            let _ = h.tx.send(msg()).await;
        }
        for h in handles {
            h.wait_done().await;
        }
    }

    /// The idle activation used least recently, other than `except`.
    fn lru_idle(&self, except: Option<&str>) -> Option<Arc<Handle>> {
        self.map
            .iter()
            .filter(|e| except != Some(e.key().as_str()) && e.value().idle())
            .min_by_key(|e| {
                (
                    e.value().last_used_ms.load(Ordering::Acquire),
                    e.key().clone(),
                )
            })
            .map(|e| e.value().clone())
    }

    /// Evicts the least recently used idle activation (persisting it).
    /// Returns whether one was evicted.
    async fn evict_lru(&self, except: Option<&str>) -> bool {
        let Some(h) = self.lru_idle(except) else {
            return false;
        };
        if h.tx.try_send(Msg::Evict).is_err() {
            return false;
        }
        metrics::counter!("tern_budget_evictions_total").increment(1);
        tracing::debug!(actor = %h.key, "evicted for room (least recently used)");
        let waited =
            tokio::time::timeout(Duration::from_millis(EVICT_WAIT_MS_MAX), h.wait_done()).await;
        waited.is_ok()
    }
}

/// Ends the entry when its task ends, however it ends.
struct EntryGuard {
    node: Arc<NodeInner>,
    handle: Arc<Handle>,
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        let t = &self.node.table;
        let h = &self.handle;
        // Leave the table before anyone waits on `done`, so a waiter's
        // retry creates a fresh activation.
        if t.map.remove_if(&h.key, |_, x| Arc::ptr_eq(x, h)).is_some() {
            t.count.fetch_sub(1, Ordering::AcqRel);
        }
        t.set_resident(h, 0);
        h.ended.set(true);
    }
}

impl Node {
    /// Queues `msg` on the actor's mailbox, activating it here if needed.
    /// An activation that is ending is waited out (it persists and
    /// releases, and leaves the table itself) and a new one is started.
    pub(crate) async fn deliver(
        &self,
        key: &str,
        actor_type: &str,
        id: &str,
        ty: &TypeConfig,
        mut msg: Msg,
    ) -> Result<()> {
        loop {
            let handle = self.activation(key, actor_type, id, ty).await?;
            match handle.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(RuntimeError::MailboxFull {
                        actor: key.to_string(),
                        limit: ty.limits.mailbox_depth_max,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    msg = m;
                    handle.wait_done().await;
                }
            }
        }
    }

    /// The actor's table entry, created (within the POP's budgets) if
    /// needed.
    async fn activation(
        &self,
        key: &str,
        actor_type: &str,
        id: &str,
        ty: &TypeConfig,
    ) -> Result<Arc<Handle>> {
        let t = &self.inner.table;
        if let Some(h) = t.map.get(key) {
            return Ok(h.clone());
        }
        self.admit(key).await?;
        match t.map.entry(key.to_string()) {
            Entry::Occupied(o) => {
                // Someone else created it meanwhile: give the slot back.
                t.count.fetch_sub(1, Ordering::AcqRel);
                Ok(o.get().clone())
            }
            Entry::Vacant(v) => {
                let (tx, rx) = mpsc::channel(ty.limits.mailbox_depth_max as usize);
                let handle = Arc::new(Handle {
                    key: key.to_string(),
                    tx,
                    ended: Flag::new(false),
                    busy: AtomicBool::new(false),
                    last_used_ms: AtomicU64::new(self.since_start_ms()),
                    resident: AtomicU64::new(0),
                    version: AtomicU64::new(0),
                });
                v.insert(handle.clone());
                let guard = EntryGuard {
                    node: self.inner.clone(),
                    handle: handle.clone(),
                };
                let node = self.clone();
                let (actor_type, id) = (actor_type.to_string(), id.to_string());
                let h = handle.clone();
                // The call that activates the actor: its claim and restore
                // are traced as its children.
                let origin = tracing::Span::current();
                tokio::spawn(async move {
                    let _guard = guard;
                    let key = h.key.clone();
                    let run = node.run_activation(actor_type, id, h, rx, origin);
                    if let Err(p) = AssertUnwindSafe(run).catch_unwind().await {
                        metrics::counter!("tern_activation_panics_total").increment(1);
                        tracing::error!(actor = %key, panic = %panic_message(p.as_ref()), "activation task panicked; it was removed and its queued calls failed");
                    }
                });
                Ok(handle)
            }
        }
    }

    pub(crate) fn since_start_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Reserves room for one more activation, evicting idle ones (least
    /// recently used first) when a budget is reached.
    async fn admit(&self, key: &str) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(RuntimeError::ShuttingDown);
        }
        let t = &self.inner.table;
        let cfg = self.inner.cfg;
        for _ in 0..=ADMIT_EVICTIONS_MAX {
            let over_mem = t.resident_bytes() >= cfg.resident_bytes_max;
            if !over_mem {
                let prev = t.count.fetch_add(1, Ordering::AcqRel);
                if prev < cfg.activations_max {
                    return Ok(());
                }
                t.count.fetch_sub(1, Ordering::AcqRel);
            }
            if !t.evict_lru(None).await {
                break;
            }
        }
        metrics::counter!("tern_admissions_refused_total").increment(1);
        let why = if t.resident_bytes() >= cfg.resident_bytes_max {
            format!(
                "this POP's resident actor memory budget (resident_bytes_max = {} bytes; {} in use) is used up",
                cfg.resident_bytes_max,
                t.resident_bytes()
            )
        } else {
            format!(
                "this POP's activation budget (activations_max = {}) is used up",
                cfg.activations_max
            )
        };
        Err(RuntimeError::PopBudget(format!(
            "cannot activate {key}: {why} and every activation is busy; retry later or at another POP"
        )))
    }

    /// After a turn grew resident memory past the budget: evicts idle
    /// activations (least recently used first, never `except`) until it
    /// fits. One shedder runs at a time.
    pub(crate) fn shed_if_over(&self, except: &str) {
        let t = &self.inner.table;
        if t.resident_bytes() <= self.inner.cfg.resident_bytes_max
            || t.shedding.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let node = self.clone();
        let except = except.to_string();
        tokio::spawn(async move {
            let t = &node.inner.table;
            while t.resident_bytes() > node.inner.cfg.resident_bytes_max {
                if !t.evict_lru(Some(&except)).await {
                    break;
                }
            }
            t.shedding.store(false, Ordering::Release);
        });
    }
}
