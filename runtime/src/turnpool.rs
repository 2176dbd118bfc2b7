//! The turn executor: guest turns run here, never on the tokio workers
//! that carry the lease heartbeat, the gRPC servers and the directory link.
//!
//! The pool has `slots` run slots (by default one per core): at most that
//! many turns execute guest code at once. Threads are created on demand: a
//! turn blocked in a nested actor call gives its slot back (see
//! [`TurnPool::block`]) and keeps its thread, so the pool may hold more
//! threads than slots, up to [`TURN_THREADS_MAX`]; idle extra threads exit.
//!
//! Scheduling is fair by CPU time, in the manner of EEVDF (the Linux
//! scheduler): each job carries a virtual start time, the CPU its actor has
//! used so far, raised to the pool's virtual clock (the latest start
//! served) when the actor fell behind it; and a virtual deadline, its start
//! plus the CPU its actor's turns usually take. The job with the earliest
//! deadline runs first. An actor that uses little CPU per turn therefore
//! runs ahead of actors that burn their whole budget every turn: however
//! many spinners flood the POP, a light actor waits for the turns already
//! running, not for the queue. A heavy actor still runs: its deadline is
//! fixed while the clock, and every newcomer's deadline, moves past it.
//!
//! A simulator uses [`TurnPool::lock_step`] instead: each job runs on a
//! thread of its own while the (single) runtime thread waits for it, and a
//! nested call hands control back to the runtime thread until its reply is
//! in, so exactly one thread runs at any time and a run is deterministic.
//!
//! Turn threads run at a lower OS priority (nice +[`TURN_THREAD_NICE`]) than
//! the rest of the process, so the kernel prefers the lease heartbeat and
//! gRPC threads when cores are contended.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BinaryHeap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

/// Most threads the pool creates (run slots plus turns blocked in nested
/// calls).
pub const TURN_THREADS_MAX: usize = 256;

/// Most run slots a pool may be configured with.
pub const TURN_SLOTS_MAX: usize = 64;

/// Jobs waiting for a slot before `run` refuses more (each activation
/// submits at most one job at a time, so this also bounds activations
/// waiting to run).
pub const TURN_QUEUE_MAX: usize = 1 << 20;

/// An extra thread idle this long exits.
const IDLE_THREAD_MS: u64 = 10_000;

/// How much lower turn threads are scheduled by the OS.
pub const TURN_THREAD_NICE: i32 = 5;

/// A boxed future a lock-step turn hands to the runtime thread.
type NestedFuture = Pin<Box<dyn Future<Output = Box<dyn Any + Send>> + Send>>;

/// What a lock-step turn thread tells the runtime thread.
enum Event {
    /// The job ended (its boxed outcome).
    Done(Box<dyn Any + Send>),
    /// The job waits on this future; send its output back.
    Nested(NestedFuture, std::sync::mpsc::Sender<Box<dyn Any + Send>>),
}

thread_local! {
    static POOL_THREAD: Cell<bool> = const { Cell::new(false) };
    /// On a lock-step turn thread: where to send nested futures.
    static LOCK_STEP: RefCell<Option<std::sync::mpsc::Sender<Event>>> = const { RefCell::new(None) };
    /// Time the current job spent blocked in [`TurnPool::block`].
    static BLOCKED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// A job panicked; the message is the panic's.
#[derive(Debug, Clone)]
pub struct Panicked(pub String);

/// A job's outcome: its value and the time it ran for (not counting time
/// blocked in nested calls).
pub type Ran<R> = Result<(R, Duration), Panicked>;

struct Job {
    start: u64,
    deadline: u64,
    seq: u64,
    run: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    /// Reversed: the heap's top is the earliest (deadline, seq).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

#[derive(Default)]
struct State {
    queue: BinaryHeap<Job>,
    /// Turns holding a run slot.
    running: usize,
    /// Turns blocked in nested calls (they hold a thread, not a slot).
    blocked: usize,
    /// Turns back from a nested call, waiting for a slot: they go before
    /// queued jobs.
    retaking: usize,
    threads: usize,
    idle: usize,
    vclock: u64,
    seq: u64,
}

struct Inner {
    slots: usize,
    state: Mutex<State>,
    /// Idle workers wait here for a job and a slot.
    work: Condvar,
    /// Turns back from a nested call wait here for a slot.
    slot: Condvar,
}

impl Inner {
    /// A slot was freed (`st` is still locked by the caller): hand it to a
    /// turn waiting to retake one first, else to a worker.
    fn slot_freed(&self, st: &State) {
        if st.retaking > 0 {
            self.slot.notify_one();
        } else if !st.queue.is_empty() {
            self.work.notify_one();
        }
    }
}

/// The turn executor. Cheap to clone.
#[derive(Clone)]
pub struct TurnPool {
    inner: Arc<Inner>,
    /// Lock-step mode (a simulator): one thread runs at a time.
    lock_step: bool,
}

impl std::fmt::Debug for TurnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnPool")
            .field("slots", &self.inner.slots)
            .finish()
    }
}

/// Run slots sized from the machine: one per core.
pub fn default_slots() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, TURN_SLOTS_MAX)
}

impl TurnPool {
    /// A pool with `slots` run slots (clamped to 1..=[`TURN_SLOTS_MAX`]).
    pub fn new(slots: usize) -> TurnPool {
        TurnPool {
            inner: Arc::new(Inner {
                slots: slots.clamp(1, TURN_SLOTS_MAX),
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                slot: Condvar::new(),
            }),
            lock_step: false,
        }
    }

    /// A lock-step executor for a single-threaded simulator: `run` blocks
    /// the runtime thread until its job ends or waits on a nested call, so
    /// exactly one thread runs at any time. Jobs report no CPU time (the
    /// simulator meters CPU with fuel), so they run in arrival order.
    pub fn lock_step() -> TurnPool {
        TurnPool {
            lock_step: true,
            ..TurnPool::new(1)
        }
    }

    /// Whether this is a lock-step (simulator) executor.
    pub fn is_lock_step(&self) -> bool {
        self.lock_step
    }

    /// Its run slots.
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// The pool's virtual clock: the latest virtual start served. An actor
    /// whose own virtual time is behind it starts from it, so it cannot
    /// bank idle time.
    pub fn vclock(&self) -> u64 {
        self.inner.state.lock().vclock
    }

    /// Jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.inner.state.lock().queue.len()
    }

    /// Runs `f` on a turn thread once a slot is free. `start` is the
    /// job's virtual start, `cost` the CPU (ns) its actor's turns usually
    /// take; the earliest `start + cost` runs first. A panic in `f` is
    /// caught and returned.
    pub async fn run<R: Send + 'static>(
        &self,
        start: u64,
        cost: u64,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Ran<R> {
        if self.lock_step {
            return run_lock_step(f).await;
        }
        let (tx, rx) = oneshot::channel();
        let job = move || {
            let started = std::time::Instant::now();
            BLOCKED.with(|b| b.set(Duration::ZERO));
            let out = std::panic::catch_unwind(AssertUnwindSafe(f));
            let used = started.elapsed().saturating_sub(BLOCKED.with(Cell::get));
            let out = match out {
                Ok(v) => Ok((v, used)),
                Err(p) => Err(Panicked(panic_message(&*p))),
            };
            let _ = tx.send(out);
        };
        {
            let mut st = self.inner.state.lock();
            if st.queue.len() >= TURN_QUEUE_MAX {
                return Err(Panicked(format!(
                    "turn queue is full (TURN_QUEUE_MAX = {TURN_QUEUE_MAX})"
                )));
            }
            st.seq += 1;
            let seq = st.seq;
            st.queue.push(Job {
                start,
                deadline: start.saturating_add(cost),
                seq,
                run: Box::new(job),
            });
            self.maybe_spawn(&mut st);
            if st.running + st.retaking < self.inner.slots {
                self.inner.work.notify_one();
            }
            metrics::gauge!("tern_turns_queued").set(st.queue.len() as f64);
        }
        rx.await
            .unwrap_or_else(|_| Err(Panicked("turn thread ended".into())))
    }

    /// Runs `fut` to completion from a turn (a nested actor call) and
    /// returns its output, giving the turn's slot to others meanwhile. On
    /// a pool thread it drives `fut` with `rt`; in lock-step mode it hands
    /// `fut` to the runtime thread and waits.
    pub fn block_on<T: Send + 'static>(
        &self,
        rt: &tokio::runtime::Handle,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T {
        if !self.lock_step {
            return self.block(|| rt.block_on(fut));
        }
        let tx = LOCK_STEP
            .with(|c| c.borrow().clone())
            .expect("a lock-step nested call runs on a lock-step turn thread");
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        let boxed: NestedFuture =
            Box::pin(async move { Box::new(fut.await) as Box<dyn Any + Send> });
        tx.send(Event::Nested(boxed, reply_tx))
            .expect("the runtime thread waits for this turn");
        let out = reply_rx
            .recv()
            .expect("the runtime thread answers a nested call");
        *out.downcast::<T>()
            .expect("a nested call's output has its type")
    }

    /// Whether a turn may block in a nested call now: refused when so many
    /// turns already wait that their callees could find no thread.
    pub fn may_block(&self) -> bool {
        let st = self.inner.state.lock();
        st.blocked + self.inner.slots < TURN_THREADS_MAX
    }

    /// Runs `f`, which blocks (a nested actor call), giving this thread's
    /// run slot to other turns meanwhile. Outside the pool it just runs `f`.
    pub fn block<R>(&self, f: impl FnOnce() -> R) -> R {
        if !POOL_THREAD.with(Cell::get) {
            return f();
        }
        let started = std::time::Instant::now();
        {
            let mut st = self.inner.state.lock();
            assert!(st.running > 0, "a pool thread blocks without a slot");
            st.running -= 1;
            st.blocked += 1;
            self.maybe_spawn(&mut st);
            self.inner.slot_freed(&st);
        }
        // Re-take a slot even if `f` panics, so the accounting holds.
        struct Retake<'a>(&'a Inner, std::time::Instant);
        impl Drop for Retake<'_> {
            fn drop(&mut self) {
                let mut st = self.0.state.lock();
                st.blocked -= 1;
                st.retaking += 1;
                while st.running >= self.0.slots {
                    self.0.slot.wait(&mut st);
                }
                st.retaking -= 1;
                st.running += 1;
                drop(st);
                let waited = self.1.elapsed();
                BLOCKED.with(|b| b.set(b.get() + waited));
            }
        }
        let _retake = Retake(&self.inner, started);
        f()
    }

    fn maybe_spawn(&self, st: &mut State) {
        let wanted = (self.inner.slots + st.blocked).min(TURN_THREADS_MAX);
        if st.queue.len() <= st.idle || st.threads >= wanted {
            return;
        }
        st.threads += 1;
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-turn".into())
            .spawn(move || worker(inner));
        if let Err(e) = spawned {
            st.threads -= 1;
            tracing::error!(error = %e, "cannot start a turn thread");
        }
    }
}

/// Runs `f` on a thread of its own while this (runtime) thread waits,
/// serving the nested futures `f` hands over in between.
async fn run_lock_step<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Ran<R> {
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let rt = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("tern-turn-lockstep".into())
        .spawn(move || {
            // Tokio's (virtual) clock reads through the runtime's context.
            let _enter = rt.enter();
            LOCK_STEP.with(|c| *c.borrow_mut() = Some(tx.clone()));
            let out = std::panic::catch_unwind(AssertUnwindSafe(f))
                .map_err(|p| Panicked(panic_message(&*p)));
            LOCK_STEP.with(|c| *c.borrow_mut() = None);
            let _ = tx.send(Event::Done(Box::new(out)));
        });
    if let Err(e) = spawned {
        return Err(Panicked(format!(
            "cannot start a lock-step turn thread: {e}"
        )));
    }
    loop {
        // Blocking this thread is the point: the turn thread runs alone.
        match rx.recv() {
            Ok(Event::Done(out)) => {
                let out = *out
                    .downcast::<Result<R, Panicked>>()
                    .expect("a lock-step job's output has its type");
                return out.map(|v| (v, Duration::ZERO));
            }
            Ok(Event::Nested(fut, reply)) => {
                let v = fut.await;
                let _ = reply.send(v);
            }
            Err(_) => return Err(Panicked("the lock-step turn thread ended".into())),
        }
    }
}

fn worker(inner: Arc<Inner>) {
    POOL_THREAD.with(|c| c.set(true));
    lower_priority();
    let mut st = inner.state.lock();
    loop {
        if st.running + st.retaking < inner.slots
            && let Some(job) = st.queue.pop()
        {
            st.running += 1;
            st.vclock = st.vclock.max(job.start);
            // Pass the word on if there is more to run and room.
            if !st.queue.is_empty() && st.running + st.retaking < inner.slots {
                inner.work.notify_one();
            }
            drop(st);
            (job.run)();
            st = inner.state.lock();
            assert!(st.running > 0, "turn slot accounting broke");
            st.running -= 1;
            // This thread takes the next job itself; only a turn waiting
            // to retake a slot needs waking.
            if st.retaking > 0 {
                inner.slot.notify_one();
            }
            continue;
        }
        st.idle += 1;
        let timed_out = inner
            .work
            .wait_for(&mut st, Duration::from_millis(IDLE_THREAD_MS))
            .timed_out();
        st.idle -= 1;
        if timed_out && st.queue.is_empty() && st.threads > inner.slots {
            st.threads -= 1;
            return;
        }
    }
}

/// Lowers this thread's OS scheduling priority (Linux: per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), TURN_THREAD_NICE) {
            tracing::debug!(error = %e, "cannot lower the turn thread's priority");
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turn_pool_runs_light_jobs_before_heavy_ones() {
        let pool = TurnPool::new(1);
        // Occupy the only slot until released.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let p = pool.clone();
        let holder = tokio::spawn(async move {
            p.run(0, 0, move || {
                let _ = started_tx.send(());
                let _ = hold_rx.recv();
            })
            .await
        });
        started_rx.await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut jobs = Vec::new();
        // Same start; the light actor's turns are short, so its deadline
        // is earliest; of the heavy ones, the earlier start goes first.
        for (name, start, cost) in [
            ("heavy1", 100u64, 50_000u64),
            ("heavy2", 90, 50_000),
            ("light", 100, 500),
        ] {
            let p = pool.clone();
            let o = order.clone();
            jobs.push(tokio::spawn(async move {
                p.run(start, cost, move || o.lock().push(name)).await
            }));
            // Each job is queued before the next is submitted.
            while pool.queued() < jobs.len() {
                tokio::task::yield_now().await;
            }
        }
        hold_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock(), ["light", "heavy2", "heavy1"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lock_step_turn_serves_nested_futures_on_the_runtime_thread() {
        let pool = TurnPool::lock_step();
        let p = pool.clone();
        let rt = tokio::runtime::Handle::current();
        let ((a, b), _) = pool
            .run(0, 0, move || {
                let a = p.block_on(&rt, async { 20 });
                let b = p.block_on(&rt, async {
                    tokio::task::yield_now().await;
                    22
                });
                (a, b)
            })
            .await
            .unwrap();
        assert_eq!(a + b, 42);
        let r = pool.run(0, 0, || panic!("lock-step boom")).await;
        assert!(matches!(&r, Err(Panicked(m)) if m == "lock-step boom"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turn_pool_catches_panics() {
        let pool = TurnPool::new(1);
        let r = pool.run(0, 0, || panic!("boom")).await;
        assert!(
            matches!(&r, Err(Panicked(m)) if m == "boom"),
            "{:?}",
            r.err()
        );
        // The slot came back.
        let (v, _) = pool.run(0, 0, || 7).await.unwrap();
        assert_eq!(v, 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_turn_gives_its_slot_back() {
        // One slot: a job that blocks waiting for a second job would
        // deadlock unless `block` releases the slot.
        let pool = TurnPool::new(1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let ran = Arc::new(AtomicUsize::new(0));
        let p = pool.clone();
        let first = tokio::spawn(async move {
            let p2 = p.clone();
            p.run(0, 0, move || p2.block(|| rx.recv().unwrap())).await
        });
        let r = ran.clone();
        pool.run(0, 0, move || {
            r.fetch_add(1, Ordering::SeqCst);
            tx.send(()).unwrap();
        })
        .await
        .unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
