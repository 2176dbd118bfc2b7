//! One live actor instance: its wasmtime store, its host-owned memories,
//! the host imports it sees, and running one turn under its limits.

use std::sync::Arc;

use wasmtime::component::{ComponentExportIndex, HasSelf, Linker, ResourceTable, TypedFunc};
use wasmtime::{Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::Limits;
use crate::engine::{CpuMeter, EPOCH_TICK_MS};
use crate::error::{Result, RuntimeError};
use crate::hostmem::{self, MemoryHandle, Parked};
use crate::outbox::{Refusal, TurnEffects};

wasmtime::component::bindgen!({
    path: "../actor-sdk/wit",
    world: "actor",
});

pub use tern::actor::host::Level;
pub use tern::actor::types::ErrorKind as GuestErrorKind;

use crate::clock::World;
use crate::error::ErrorKind;

/// One nested call from a running turn.
#[derive(Debug, Clone)]
pub struct NestedCall<'a> {
    /// The call chain (outermost first, ending with the caller).
    pub chain: &'a [String],
    /// Callee type.
    pub ty: &'a str,
    /// Callee id.
    pub id: &'a str,
    /// Method.
    pub method: &'a str,
    /// Payload.
    pub payload: Vec<u8>,
    /// Derived from the calling turn's idempotency key, so a turn retried
    /// after a crash re-sends its nested calls with the same keys.
    pub idempotency_key: Option<String>,
    /// The calling turn's deadline: a nested call inherits it.
    pub deadline: Option<tokio::time::Instant>,
}

/// How a running turn reaches other actors (the node implements it).
pub trait ActorCaller: Send + Sync {
    /// Makes a nested call and waits for its reply. Blocks.
    fn call_blocking(&self, call: NestedCall<'_>) -> Result<Vec<u8>>;

    /// Keeps a line the guest logged (for `tern logs`). Default: nothing.
    fn guest_log(&self, _actor: &str, _level: Level, _message: &str) {}
}

/// The idempotency key of the `n`-th nested call of a turn keyed `base`.
pub fn nested_key(base: &str, n: u32) -> String {
    let suffix = format!("#{n}");
    if base.len() + suffix.len() <= crate::idem::IDEMPOTENCY_KEY_BYTES_MAX {
        format!("{base}{suffix}")
    } else {
        let h = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(base.as_bytes()));
        format!("{}{suffix}", &h[..32])
    }
}

/// The store data of an actor instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_bytes_max: usize,
    memory_cap_hit: bool,
    actor_type: String,
    actor_id: String,
    pop: String,
    epoch: u64,
    /// Call chain of the turn in progress, ending with this actor.
    chain: Vec<String>,
    caller: Arc<dyn ActorCaller>,
    /// The last panic message the guest logged, attached to its trap.
    last_error_log: Option<String>,
    /// When the current turn started.
    turn_started: std::time::Instant,
    /// Time the current turn spent blocked in nested calls (not charged to
    /// its CPU budget).
    blocked: std::time::Duration,
    /// The current turn's CPU budget.
    budget: std::time::Duration,
    /// The current turn's idempotency key, and its nested calls so far.
    idem_base: Option<String>,
    nested_calls: u32,
    /// The current turn's deadline.
    deadline: Option<tokio::time::Instant>,
    world: World,
    /// The current turn's alarms and events (see [`crate::outbox`]).
    fx: TurnEffects,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.memory_cap_hit = true;
            wasmtime::bail!("memory cap of {} bytes reached", self.memory_bytes_max);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl tern::actor::types::Host for HostState {}

impl tern::actor::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let actor = format!("{}/{}", self.actor_type, self.actor_id);
        self.caller.guest_log(&actor, level, &message);
        match level {
            Level::Trace => tracing::trace!(target: "tern::guest", %actor, "{message}"),
            Level::Debug => tracing::debug!(target: "tern::guest", %actor, "{message}"),
            Level::Info => tracing::info!(target: "tern::guest", %actor, "{message}"),
            Level::Warn => tracing::warn!(target: "tern::guest", %actor, "{message}"),
            Level::Error => {
                tracing::error!(target: "tern::guest", %actor, "{message}");
                self.last_error_log = Some(message);
            }
        }
    }

    fn now_ms(&mut self) -> u64 {
        self.world.clock.wall_ms()
    }

    fn random_u64(&mut self) -> u64 {
        self.world.entropy.next_u64()
    }

    fn self_address(&mut self) -> (String, String) {
        (self.actor_type.clone(), self.actor_id.clone())
    }

    fn activation(&mut self) -> (String, u64) {
        (self.pop.clone(), self.epoch)
    }

    fn call(
        &mut self,
        actor_type: String,
        id: String,
        method: String,
        payload: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, ActorError> {
        if self.chain.is_empty() {
            // `save` and `load` run outside any call (upgrades).
            return Err(ActorError {
                kind: GuestErrorKind::FailedPrecondition,
                message: "an actor cannot call other actors from save or load".into(),
            });
        }
        let idempotency_key = self
            .idem_base
            .as_deref()
            .map(|b| nested_key(b, self.nested_calls));
        self.nested_calls += 1;
        let started = std::time::Instant::now();
        let res = self.caller.call_blocking(NestedCall {
            chain: &self.chain,
            ty: &actor_type,
            id: &id,
            method: &method,
            payload,
            idempotency_key,
            deadline: self.deadline,
        });
        self.blocked += started.elapsed();
        res.map_err(|e| ActorError {
            kind: error_kind(&e),
            message: e.to_string(),
        })
    }

    fn set_alarm(&mut self, at_ms: u64, tag: String) -> std::result::Result<u64, ActorError> {
        self.fx.set_alarm(at_ms, tag).map_err(refused)
    }

    fn cancel_alarm(&mut self, id: u64) -> bool {
        self.fx.cancel_alarm(id)
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>) -> std::result::Result<(), ActorError> {
        self.fx.publish(topic, payload).map_err(refused)
    }
}

/// The guest's error for an outbox call the runtime refused.
fn refused((limit, message): Refusal) -> ActorError {
    ActorError {
        kind: if limit {
            GuestErrorKind::ResourceExhausted
        } else {
            GuestErrorKind::InvalidArgument
        },
        message,
    }
}

/// The WIT error kind for a runtime error crossing into a guest.
fn error_kind(e: &RuntimeError) -> GuestErrorKind {
    match e.kind() {
        ErrorKind::NotFound => GuestErrorKind::NotFound,
        ErrorKind::InvalidArgument => GuestErrorKind::InvalidArgument,
        // An actor-to-actor call is never refused for credentials (the
        // calling actor's POP is trusted); a remote answer that says so
        // is a precondition the guest cannot fix.
        ErrorKind::FailedPrecondition
        | ErrorKind::Unauthenticated
        | ErrorKind::PermissionDenied => GuestErrorKind::FailedPrecondition,
        ErrorKind::ResourceExhausted => GuestErrorKind::ResourceExhausted,
        ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => GuestErrorKind::Unavailable,
        ErrorKind::Aborted => GuestErrorKind::Aborted,
        ErrorKind::DataLoss | ErrorKind::Internal => GuestErrorKind::Internal,
    }
}

/// Maps a guest's own error onto the runtime's, keeping its kind.
pub fn guest_error(e: ActorError) -> RuntimeError {
    let kind = match e.kind {
        GuestErrorKind::NotFound => ErrorKind::NotFound,
        GuestErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
        GuestErrorKind::FailedPrecondition => ErrorKind::FailedPrecondition,
        GuestErrorKind::ResourceExhausted => ErrorKind::ResourceExhausted,
        GuestErrorKind::Unavailable => ErrorKind::Unavailable,
        GuestErrorKind::Aborted => ErrorKind::Aborted,
        GuestErrorKind::Internal => ErrorKind::Internal,
    };
    RuntimeError::Guest {
        kind,
        message: e.message,
    }
}

/// The WASI interfaces a guest may import: what a language's standard
/// library needs to start and to print (stdio is discarded, there is no
/// environment, `exit` traps). Nothing that reaches files, sockets, HTTP,
/// clocks or randomness: time and randomness come from the `tern:actor`
/// host, which the simulator can control. Deploy refuses a component that
/// imports anything else, and names it.
pub const WASI_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
];

/// The imports of `component` that are neither `tern:actor` nor one of
/// [`WASI_INTERFACES`] (any version).
pub fn refused_imports(component: &wasmtime::component::Component) -> Vec<String> {
    let ty = component.component_type();
    ty.imports(component.engine())
        .map(|(name, _)| name.to_string())
        .filter(|name| {
            let base = name.split('@').next().unwrap_or(name);
            !(base.starts_with("tern:actor/") || WASI_INTERFACES.contains(&base))
        })
        .collect()
}

/// Lends a store's resource table to the `wasi:io` host functions.
struct HasIo;

impl wasmtime::component::HasData for HasIo {
    type Data<'a> = &'a mut wasmtime::component::ResourceTable;
}

/// The linker every actor instance is created with: the WASI interfaces
/// of [`WASI_INTERFACES`] (and no others) plus the `tern:actor` host.
pub fn linker(engine: &wasmtime::Engine) -> Result<Linker<HostState>> {
    use wasmtime_wasi::WasiView;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::p2::bindings::{cli, sync};
    let mut linker = Linker::new(engine);
    let l = &mut linker;
    let linked = (|| -> wasmtime::Result<()> {
        cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
        sync::io::error::add_to_linker::<HostState, HasIo>(l, |t| t.ctx().table)?;
        sync::io::poll::add_to_linker::<HostState, HasIo>(l, |t| t.ctx().table)?;
        sync::io::streams::add_to_linker::<HostState, HasIo>(l, |t| t.ctx().table)?;
        Ok(())
    })();
    linked.map_err(|e| RuntimeError::Engine(e.to_string()))?;
    Actor::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| RuntimeError::Engine(e.to_string()))?;
    Ok(linker)
}

/// A compiled, linked component ready to instantiate.
pub struct Prepared {
    pre: ActorPre<HostState>,
    digest: String,
    /// The getter and setter exports of each captured global, in slot
    /// order (see `crate::globals`).
    globals: Vec<(ComponentExportIndex, ComponentExportIndex)>,
}

/// A global's getter and setter on a live instance.
type GlobalAccess = (TypedFunc<(), (u64,)>, TypedFunc<(u64,), ()>);

impl Prepared {
    /// Links `component` (instrumented for `globals` captured globals);
    /// fails with a clear message when it does not export `handle` or
    /// imports something tern does not offer.
    pub fn new(
        linker: &Linker<HostState>,
        component: wasmtime::component::Component,
        digest: String,
        globals: usize,
    ) -> Result<Self> {
        let export = |name: String| {
            component.get_export_index(None, &name).ok_or_else(|| {
                RuntimeError::Internal(format!("instrumented export {name} missing"))
            })
        };
        let globals = (0..globals)
            .map(|n| {
                Ok((
                    export(format!("{}{n}", crate::globals::GET_EXPORT_PREFIX))?,
                    export(format!("{}{n}", crate::globals::SET_EXPORT_PREFIX))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let refused = refused_imports(&component);
        if !refused.is_empty() {
            return Err(RuntimeError::ComponentRejected(format!(
                "it imports {}, which tern does not provide; an actor reaches only the tern:actor host and {} (no files, sockets, HTTP, clocks or randomness: use the host's now-ms and random-u64)",
                refused.join(", "),
                WASI_INTERFACES.join(", ")
            )));
        }
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            RuntimeError::ComponentRejected(format!(
                "it imports something tern does not provide: {e:#}"
            ))
        })?;
        let pre = ActorPre::new(pre).map_err(|e| {
            RuntimeError::ComponentRejected(format!(
                "it does not implement the tern:actor world (export `handle`): {e:#}"
            ))
        })?;
        Ok(Prepared {
            pre,
            digest,
            globals,
        })
    }

    /// The sha256 of the component.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// Who an instance is and what bounds it.
#[derive(Clone)]
pub struct InstanceParams {
    /// The actor's type.
    pub actor_type: String,
    /// The actor's id.
    pub actor_id: String,
    /// Its type's limits.
    pub limits: Limits,
    /// The POP running it.
    pub pop: String,
    /// Its activation epoch.
    pub epoch: u64,
    /// How its `call` import reaches other actors.
    pub caller: Arc<dyn ActorCaller>,
    /// The clock and randomness its host imports read.
    pub world: World,
    /// How its CPU budget is metered.
    pub meter: crate::engine::CpuMeter,
}

/// What one turn is asked to do.
#[derive(Debug, Clone)]
pub struct TurnInput<'a> {
    /// The call chain, ending with this actor.
    pub chain: Vec<String>,
    /// The method.
    pub method: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// The call's idempotency key, if any.
    pub idempotency_key: Option<&'a str>,
    /// The call's deadline, inherited by nested calls.
    pub deadline: Option<tokio::time::Instant>,
}

/// The context of a `save` or `load` entry: no chain, no key, no deadline
/// beyond the CPU budget. Nested calls from it are refused (the chain
/// names no caller to answer to).
fn upgrade_turn(method: &'static str) -> TurnInput<'static> {
    TurnInput {
        chain: Vec::new(),
        method,
        payload: &[],
        idempotency_key: None,
        deadline: None,
    }
}

/// How one turn ended when the guest did not trap.
pub type TurnOutput = std::result::Result<Vec<u8>, ActorError>;

/// A live instance. Dropping it releases its memories.
pub struct ActorInstance {
    store: Store<HostState>,
    bindings: Actor,
    memories: Vec<MemoryHandle>,
    globals: Vec<GlobalAccess>,
    meter: CpuMeter,
}

impl ActorInstance {
    /// Instantiates `prep`. `presize[i]` makes the i-th memory start at that
    /// many bytes (to restore a memory that had grown).
    pub fn new(
        engine: &wasmtime::Engine,
        prep: &Prepared,
        params: &InstanceParams,
        presize: &[usize],
    ) -> Result<Self> {
        ActorInstance::instantiate(engine, prep, params, presize, Vec::new())
    }

    /// [`ActorInstance::new`], the memories taking over the `adopt`ed
    /// regions (see [`hostmem::capture_adopting`]).
    fn instantiate(
        engine: &wasmtime::Engine,
        prep: &Prepared,
        params: &InstanceParams,
        presize: &[usize],
        adopt: Vec<Parked>,
    ) -> Result<Self> {
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory_bytes_max: params.limits.memory_bytes_max as usize,
            memory_cap_hit: false,
            actor_type: params.actor_type.clone(),
            actor_id: params.actor_id.clone(),
            pop: params.pop.clone(),
            epoch: params.epoch,
            chain: Vec::new(),
            caller: params.caller.clone(),
            last_error_log: None,
            turn_started: std::time::Instant::now(),
            blocked: std::time::Duration::ZERO,
            budget: std::time::Duration::from_millis(instantiate_budget_ms(&params.limits)),
            idem_base: None,
            nested_calls: 0,
            deadline: None,
            world: params.world.clone(),
            fx: TurnEffects::closed(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| s);
        if let CpuMeter::Fuel { per_ms } = params.meter {
            store
                .set_fuel(params.limits.turn_cpu_ms_max.saturating_mul(per_ms))
                .map_err(|e| RuntimeError::Engine(format!("cannot set fuel: {e}")))?;
        } else {
            store.set_epoch_deadline(ticks(instantiate_budget_ms(&params.limits)));
        }
        // The budget counts the turn's own running time: time blocked in
        // nested calls is given back.
        store.epoch_deadline_callback(|ctx| {
            let d = ctx.data();
            let used = d.turn_started.elapsed().saturating_sub(d.blocked);
            if used >= d.budget {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            let left_ms = (d.budget - used).as_millis() as u64;
            Ok(wasmtime::UpdateDeadline::Continue(
                left_ms.div_ceil(EPOCH_TICK_MS).max(1),
            ))
        });
        let (instance, memories) = hostmem::capture_adopting(presize, adopt, || {
            prep.pre.instance_pre().instantiate(&mut store)
        });
        let cannot =
            |e: wasmtime::Error| RuntimeError::Engine(format!("cannot instantiate: {e:#}"));
        let instance = instance.map_err(cannot)?;
        let bindings = Actor::new(&mut store, &instance).map_err(cannot)?;
        let globals = prep
            .globals
            .iter()
            .map(|(get, set)| {
                Ok((
                    instance.get_typed_func(&mut store, get).map_err(cannot)?,
                    instance.get_typed_func(&mut store, set).map_err(cannot)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ActorInstance {
            store,
            bindings,
            memories,
            globals,
            meter: params.meter,
        })
    }

    /// Instantiates `prep` with the state of a snapshot: its memory images
    /// and globals (see [`ActorInstance::write_globals`]).
    pub fn restored(
        engine: &wasmtime::Engine,
        prep: &Prepared,
        params: &InstanceParams,
        memories: &[Vec<u8>],
        globals: &[u64],
    ) -> Result<Self> {
        let lens: Vec<usize> = memories.iter().map(Vec::len).collect();
        let mut inst = ActorInstance::new(engine, prep, params, &lens)?;
        inst.write_memories(memories)?;
        inst.write_globals(globals)?;
        Ok(inst)
    }

    /// Instantiates `prep` with the state of a snapshot whose memory images
    /// an earlier instance of the same actor left `parked` (see
    /// [`ActorInstance::park`]): the new memories take over their regions,
    /// so nothing is copied but the pages the instantiation itself wrote
    /// over them (data segments), which write tracking for the baseline
    /// `token` reports. `images` must equal the parked bytes. A memory
    /// that was not adopted, or whose tracking is off, is copied from its
    /// image whole; an instantiation that fails over adopted memories is
    /// done again over zeroed ones.
    pub fn adopted(
        engine: &wasmtime::Engine,
        prep: &Prepared,
        params: &InstanceParams,
        parked: Vec<Parked>,
        token: u64,
        images: &[Vec<u8>],
        globals: &[u64],
    ) -> Result<Self> {
        let lens: Vec<usize> = images.iter().map(Vec::len).collect();
        let mut inst = match ActorInstance::instantiate(engine, prep, params, &lens, parked) {
            Ok(inst) => inst,
            Err(e) => {
                tracing::warn!(actor = %params.actor_id, error = %e, "instantiation over kept memory failed; restoring from a copy");
                return ActorInstance::restored(engine, prep, params, images, globals);
            }
        };
        if inst.memories.len() != images.len() {
            inst.write_memories(images)?; // refuses the mismatch
        }
        for (i, img) in images.iter().enumerate() {
            let mem = &inst.memories[i];
            // (Token 0, a baseline never tracked, is armed for nothing.)
            match mem.take_written(token) {
                Some(written) => {
                    // SAFETY: no guest code runs (we own the instance and
                    // run none), and this is the only slice of the memory.
                    let dst = unsafe { mem.bytes_mut() };
                    assert_eq!(
                        dst.len(),
                        img.len(),
                        "an adopted memory has its image's size"
                    );
                    for r in written {
                        let r = r.start.min(img.len())..r.end.min(img.len());
                        dst[r.clone()].copy_from_slice(&img[r]);
                    }
                }
                None => inst.write_memory(i, img)?,
            }
        }
        inst.write_globals(globals)?;
        Ok(inst)
    }

    /// Ends the instance and keeps its memories, with their bytes, for a
    /// later instance of the same actor ([`ActorInstance::adopted`]).
    /// `None` (and every memory released) if one cannot be kept.
    pub fn park(self) -> Option<Vec<Parked>> {
        let ActorInstance {
            store, memories, ..
        } = self;
        // The engine's own references to the memories go with the store.
        drop(store);
        memories.into_iter().map(MemoryHandle::park).collect()
    }

    /// Lifts the CPU budget while the runtime itself calls into the
    /// instance (the global accessors): a turn that used up its budget must
    /// still be saved. The next turn sets its own budget.
    fn unmetered(&mut self) -> Result<()> {
        match self.meter {
            CpuMeter::Fuel { .. } => self
                .store
                .set_fuel(u64::MAX / 2)
                .map_err(|e| RuntimeError::Engine(format!("cannot set fuel: {e}"))),
            CpuMeter::Epoch => {
                self.store.set_epoch_deadline(u64::MAX / 2);
                Ok(())
            }
        }
    }

    /// The values of every captured mutable global (raw bits, slot order).
    pub fn read_globals(&mut self) -> Result<Vec<u64>> {
        if self.globals.is_empty() {
            return Ok(Vec::new());
        }
        self.unmetered()?;
        let mut out = Vec::with_capacity(self.globals.len());
        for (get, _) in &self.globals {
            let (v,) = get
                .call(&mut self.store, ())
                .map_err(|e| RuntimeError::Engine(format!("cannot read a global: {e:#}")))?;
            out.push(v);
        }
        Ok(out)
    }

    /// Sets every captured mutable global (raw bits, slot order). An empty
    /// `values` leaves them at their initial values: snapshots taken before
    /// tern captured globals hold none, and the only global those
    /// components could have, the shadow stack pointer, is back at its
    /// initial value between turns.
    pub fn write_globals(&mut self, values: &[u64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        if values.len() != self.globals.len() {
            return Err(RuntimeError::NotSnapshottable(format!(
                "the snapshot holds {} globals but the component has {}",
                values.len(),
                self.globals.len()
            )));
        }
        self.unmetered()?;
        for ((_, set), v) in self.globals.iter().zip(values) {
            set.call(&mut self.store, (*v,))
                .map_err(|e| RuntimeError::Engine(format!("cannot write a global: {e:#}")))?;
        }
        Ok(())
    }

    /// The instance's linear memories, in creation order.
    pub fn memories(&self) -> &[MemoryHandle] {
        &self.memories
    }

    /// Overwrites the memories with `images` (same count, same sizes, as
    /// arranged by `presize` at creation).
    pub fn write_memories(&mut self, images: &[Vec<u8>]) -> Result<()> {
        if images.len() != self.memories.len() {
            return Err(RuntimeError::NotSnapshottable(format!(
                "snapshot has {} memories but the component creates {}",
                images.len(),
                self.memories.len()
            )));
        }
        for (i, img) in images.iter().enumerate() {
            self.write_memory(i, img)?;
        }
        Ok(())
    }

    /// Overwrites memory `i` with `img` (of its size).
    fn write_memory(&mut self, i: usize, img: &[u8]) -> Result<()> {
        let mem = &self.memories[i];
        // SAFETY: no guest code runs (we hold `&mut self`, which owns the
        // store), and this is the only slice of this memory.
        let dst = unsafe { mem.bytes_mut() };
        if dst.len() != img.len() {
            return Err(RuntimeError::NotSnapshottable(format!(
                "memory is {} bytes after instantiation, snapshot image is {} bytes",
                dst.len(),
                img.len()
            )));
        }
        dst.copy_from_slice(img);
        Ok(())
    }

    /// Gives the next turn its view of the actor's alarms and topics.
    pub fn set_effects(&mut self, fx: TurnEffects) {
        self.store.data_mut().fx = fx;
    }

    /// What the last turn did to the actor's alarms and events (the view
    /// given by [`ActorInstance::set_effects`], changed by its host calls).
    pub fn take_effects(&mut self) -> TurnEffects {
        std::mem::take(&mut self.store.data_mut().fx)
    }

    /// Runs one turn. `Ok(output)` means the guest returned (its memory
    /// changes stand); `Err` means it trapped, ran out of CPU or memory, and
    /// this instance must be discarded (the caller rolls back).
    pub fn call(&mut self, turn: TurnInput<'_>, limits: &Limits) -> Result<TurnOutput> {
        let method = turn.method;
        let payload = turn.payload;
        self.begin(turn, limits)?;
        let res = self.bindings.call_handle(&mut self.store, method, payload);
        res.map_err(|e| self.trap_error(e, method, limits))
    }

    /// Runs the `save` export (upgrades): the actor's state serialized for
    /// another version, under the same CPU and memory limits as a turn.
    /// The instance must be discarded afterwards.
    pub fn save(&mut self, limits: &Limits) -> Result<TurnOutput> {
        self.begin(upgrade_turn("save"), limits)?;
        self.store.data_mut().fx = TurnEffects::closed();
        let res = self.bindings.call_save(&mut self.store);
        res.map_err(|e| self.trap_error(e, "save", limits))
    }

    /// Runs the `load` export on a fresh instance (upgrades), under the
    /// same limits as a turn.
    pub fn load(
        &mut self,
        state: &[u8],
        limits: &Limits,
    ) -> Result<std::result::Result<(), ActorError>> {
        self.begin(upgrade_turn("load"), limits)?;
        self.store.data_mut().fx = TurnEffects::closed();
        let res = self.bindings.call_load(&mut self.store, state);
        res.map_err(|e| self.trap_error(e, "load", limits))
    }

    /// Sets up the store for one guest entry: the turn's context, its
    /// memory cap and its CPU budget.
    fn begin(&mut self, turn: TurnInput<'_>, limits: &Limits) -> Result<()> {
        let TurnInput {
            chain,
            method: _,
            payload: _,
            idempotency_key,
            deadline,
        } = turn;
        {
            let data = self.store.data_mut();
            data.deadline = deadline;
            data.chain = chain;
            data.memory_cap_hit = false;
            data.last_error_log = None;
            data.memory_bytes_max = limits.memory_bytes_max as usize;
            data.turn_started = std::time::Instant::now();
            data.blocked = std::time::Duration::ZERO;
            data.budget = std::time::Duration::from_millis(limits.turn_cpu_ms_max);
            data.idem_base = idempotency_key.map(str::to_string);
            data.nested_calls = 0;
        }
        match self.meter {
            CpuMeter::Fuel { per_ms } => self
                .store
                .set_fuel(limits.turn_cpu_ms_max.saturating_mul(per_ms))
                .map_err(|e| RuntimeError::Engine(format!("cannot set fuel: {e}")))?,
            CpuMeter::Epoch => self.store.set_epoch_deadline(deadline_ticks(limits)),
        }
        Ok(())
    }

    /// The runtime error for a guest entry that trapped.
    fn trap_error(&mut self, e: wasmtime::Error, method: &str, limits: &Limits) -> RuntimeError {
        let data = self.store.data_mut();
        let actor = format!("{}/{}", data.actor_type, data.actor_id);
        let method = method.to_string();
        let trap = e.downcast_ref::<Trap>();
        if trap == Some(&Trap::Interrupt) || trap == Some(&Trap::OutOfFuel) {
            RuntimeError::CpuBudget {
                actor,
                method,
                limit_ms: limits.turn_cpu_ms_max,
            }
        } else if data.memory_cap_hit {
            RuntimeError::MemoryCap {
                actor,
                method,
                limit: limits.memory_bytes_max,
            }
        } else {
            let reason = match data.last_error_log.take() {
                Some(log) => format!("{log} ({})", root_cause(&e)),
                None => root_cause(&e),
            };
            RuntimeError::Trap {
                actor,
                method,
                reason,
            }
        }
    }

    /// Checks the instance holds no host resources, which could not survive
    /// a restore (for example a WASI stdout handle cached by libc).
    pub fn check_snapshottable(&self) -> Result<()> {
        if self.store.data().table.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::NotSnapshottable(
                "the actor holds a host resource (such as a WASI stdout/stderr handle, opened by println!) across turns, which cannot survive a restore; log through tern_actor_sdk::log instead. The turn was rolled back".into(),
            ))
        }
    }
}

fn root_cause(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e}"),
    }
}

fn deadline_ticks(limits: &Limits) -> u64 {
    ticks(limits.turn_cpu_ms_max)
}

/// Epoch ticks for a budget of `ms`.
fn ticks(ms: u64) -> u64 {
    ms.div_ceil(EPOCH_TICK_MS).max(1) + 1
}

/// The smallest budget instantiation runs under, ms.
pub const INSTANTIATE_BUDGET_MS_MIN: u64 = 500;

/// The budget instantiation (the component's start code) runs under when
/// CPU is metered by epochs: the turn's, but at least
/// [`INSTANTIATE_BUDGET_MS_MIN`]. Epoch budgets count wall time, and an
/// activation on a loaded machine must not fail for want of the few
/// milliseconds a turn's budget leaves (a 50 ms budget was exceeded during
/// instantiation by a POP starved of CPU in CI); start code that never
/// ends is still stopped. Each turn then sets its own budget.
fn instantiate_budget_ms(limits: &Limits) -> u64 {
    limits.turn_cpu_ms_max.max(INSTANTIATE_BUDGET_MS_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_calls_get_stable_bounded_keys() {
        assert_eq!(nested_key("op-1", 0), "op-1#0");
        assert_eq!(nested_key("op-1", 7), "op-1#7");
        let long = "x".repeat(crate::idem::IDEMPOTENCY_KEY_BYTES_MAX);
        let k = nested_key(&long, 3);
        assert!(k.len() <= crate::idem::IDEMPOTENCY_KEY_BYTES_MAX, "{k}");
        assert_eq!(
            k,
            nested_key(&long, 3),
            "keys must be stable across retries"
        );
        assert_ne!(k, nested_key(&long, 4));
    }
}
