//! The wasmtime engine, deploy-time validation of components, and the
//! compiled-component cache.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use wasmparser::{CanonicalFunction, CanonicalOption, Operator, Parser, Payload};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::error::{Result, RuntimeError};
use crate::hostmem::HostMemoryCreator;
use crate::instance::{HostState, Prepared};

/// How often the epoch ticker advances the engine's epoch.
pub const EPOCH_TICK_MS: u64 = 2;

/// Compiled components cached by digest before the cache is cleared.
pub const COMPILED_CACHED_MAX: usize = 256;

/// The version string a snapshot records with its component digest.
pub const ENGINE_VERSION: &str = concat!("tern-", env!("CARGO_PKG_VERSION"), "/wasmtime-48");

/// One engine per process, with its epoch ticker.
#[derive(Clone)]
pub struct TernEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    compiled: Arc<DashMap<String, Arc<Prepared>>>,
    /// One compile per digest at a time: concurrent first activations of
    /// a type wait for the same compile instead of each compiling.
    compiling: Arc<DashMap<String, Arc<parking_lot::Mutex<()>>>>,
    /// How CPU budgets are metered.
    meter: CpuMeter,
    /// Components compiled by this engine (not loaded from a cache).
    compiles: Arc<std::sync::atomic::AtomicU64>,
    /// Components loaded from the local code directory.
    local_loads: Arc<std::sync::atomic::AtomicU64>,
    /// The POP's local-disk cache of compiled code, if it has one.
    code_dir: Option<crate::codedir::CodeDir>,
}

/// How an engine meters a turn's CPU budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMeter {
    /// Wall-clock time, by epoch interruption (a ticker thread advances the
    /// epoch every [`EPOCH_TICK_MS`]).
    Epoch,
    /// Instructions, by wasmtime fuel: `per_ms` units of fuel per ms of
    /// budget. Deterministic: a simulator uses it.
    Fuel {
        /// Fuel per ms of budget.
        per_ms: u64,
    },
}

impl TernEngine {
    /// Builds the engine: epoch interruption for CPU budgets, host-owned
    /// memories for snapshots, no threads.
    pub fn new() -> Result<TernEngine> {
        TernEngine::with_meter(CpuMeter::Epoch)
    }

    /// Builds an engine that meters CPU budgets with `meter`.
    pub fn with_meter(meter: CpuMeter) -> Result<TernEngine> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(meter == CpuMeter::Epoch)
            .consume_fuel(matches!(meter, CpuMeter::Fuel { .. }))
            .wasm_component_model(true)
            .memory_init_cow(false)
            .memory_reservation(4 << 30)
            .memory_reservation_for_growth(0)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .with_host_memory(Arc::new(HostMemoryCreator::default()));
        let engine = Engine::new(&cfg).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        if meter == CpuMeter::Epoch {
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("tern-epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    }
                })
                .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        }
        let linker = crate::instance::linker(&engine)?;
        Ok(TernEngine {
            engine,
            linker: Arc::new(linker),
            compiled: Arc::new(DashMap::new()),
            compiling: Arc::new(DashMap::new()),
            meter,
            compiles: Arc::default(),
            local_loads: Arc::default(),
            code_dir: None,
        })
    }

    /// Keeps compiled code in `dir` on local disk too (see
    /// [`crate::codedir`]): a POP restarting, or a second process on the
    /// machine, maps it instead of fetching it from the store.
    pub fn with_code_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Result<TernEngine> {
        let dir = dir.into();
        let cd = crate::codedir::CodeDir::open(&dir).map_err(|e| {
            RuntimeError::Engine(format!(
                "cannot use {} as the compiled-code directory: {e}",
                dir.display()
            ))
        })?;
        self.code_dir = Some(cd);
        Ok(self)
    }

    /// How many components this engine mapped from its local code
    /// directory.
    pub fn local_loads(&self) -> u64 {
        self.local_loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many components this engine compiled (rather than loaded
    /// compiled code from the store).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key of this engine's compiled code in the store: tern's engine
    /// version and wasmtime's compatibility hash of the configuration
    /// (code compiled under another key is never loaded).
    pub fn code_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        ENGINE_VERSION.hash(&mut h);
        format!("{ENGINE_VERSION}/{:016x}", h.finish())
    }

    /// How this engine meters CPU budgets.
    pub fn meter(&self) -> CpuMeter {
        self.meter
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled component `digest`, if this engine has it.
    pub fn compiled(&self, digest: &str) -> Option<Arc<Prepared>> {
        self.compiled.get(digest).map(|p| p.clone())
    }

    /// Validates and compiles `bytes` (whose sha256 is `digest`), caching the
    /// result by digest.
    pub fn prepare(&self, digest: &str, bytes: &[u8]) -> Result<Arc<Prepared>> {
        self.prepare_with(digest, bytes, None)
    }

    /// Like [`TernEngine::prepare`], with `store` as a cache of compiled
    /// code shared by every POP: code compiled for this engine's
    /// configuration is loaded from it instead of compiled, and code this
    /// engine compiles is kept there. An entry that cannot be loaded is
    /// compiled again (and replaced), never trusted.
    pub fn prepare_cached(
        &self,
        digest: &str,
        bytes: &[u8],
        store: &tern_storage::Store,
    ) -> Result<Arc<Prepared>> {
        self.prepare_with(digest, bytes, Some(store))
    }

    fn prepare_with(
        &self,
        digest: &str,
        bytes: &[u8],
        store: Option<&tern_storage::Store>,
    ) -> Result<Arc<Prepared>> {
        if let Some(pre) = self.compiled.get(digest) {
            return Ok(pre.clone());
        }
        let gate = self
            .compiling
            .entry(digest.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock();
        if let Some(pre) = self.compiled.get(digest) {
            return Ok(pre.clone());
        }
        let out = self.compile(digest, bytes, store);
        self.compiling.remove(digest);
        out
    }

    /// Compiled code from the store, ready to instantiate.
    fn load_compiled(&self, digest: &str, code: &[u8]) -> Result<Prepared> {
        // SAFETY: `deserialize` runs the machine code in `code`, so `code`
        // must be what `Component::serialize` produced. It is: the store
        // holds it content-addressed, `get_compiled` checked its sha256
        // against the digest the record names, and only `compile` below
        // writes such records, with the output of `serialize` for this
        // component. wasmtime itself refuses code of another version or
        // configuration (and `code_key` keeps those apart). The store is
        // trusted as it is for actor state; a damaged entry fails the
        // digest check or wasmtime's header checks and is recompiled.
        let component = unsafe { Component::deserialize(&self.engine, code) }
            .map_err(|e| RuntimeError::Engine(format!("cached compiled code: {e:#}")))?;
        self.prepared(digest, component)
    }

    /// A loaded component, ready to instantiate. The number of captured
    /// globals is read off its accessor exports.
    fn prepared(&self, digest: &str, component: Component) -> Result<Prepared> {
        let mut globals = 0;
        while globals <= crate::globals::GLOBALS_MAX
            && component
                .get_export_index(
                    None,
                    format!("{}{globals}", crate::globals::GET_EXPORT_PREFIX),
                )
                .is_some()
        {
            globals += 1;
        }
        Prepared::new(&self.linker, component, digest.to_string(), globals)
    }

    /// The compiled code of `digest`: mapped from the local code
    /// directory, else loaded from the store, else compiled; whatever a
    /// cache lacked is written back to it.
    fn compile(
        &self,
        digest: &str,
        bytes: &[u8],
        store: Option<&tern_storage::Store>,
    ) -> Result<Arc<Prepared>> {
        let key = self.code_key();
        let local = self
            .code_dir
            .as_ref()
            .and_then(|cd| cd.load(&self.engine, digest, &key))
            .and_then(|component| match self.prepared(digest, component) {
                Ok(pre) => Some(pre),
                Err(e) => {
                    tracing::warn!(digest, error = %e, "mapped compiled code is unusable");
                    None
                }
            });
        if local.is_some() {
            self.local_loads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("tern_compiled_code_mapped_total").increment(1);
        }
        let keep_local = |code: &[u8]| {
            if let Some(cd) = &self.code_dir {
                cd.store(digest, &key, code);
            }
        };
        let from_store = || match store.map(|s| s.get_compiled(digest, &key)) {
            Some(Ok(Some(code))) => match self.load_compiled(digest, &code) {
                Ok(pre) => {
                    metrics::counter!("tern_compiled_code_loaded_total").increment(1);
                    keep_local(&code);
                    Some(pre)
                }
                Err(e) => {
                    tracing::warn!(digest, error = %e, "cached compiled code is unusable; compiling again");
                    None
                }
            },
            Some(Err(e)) => {
                tracing::warn!(digest, error = %e, "cannot read cached compiled code; compiling again");
                None
            }
            Some(Ok(None)) | None => None,
        };
        let pre = match local.or_else(from_store) {
            Some(pre) => pre,
            None => {
                validate_component(bytes)?;
                let instrumented = crate::globals::instrument(bytes)?;
                let component = Component::new(&self.engine, &instrumented.bytes).map_err(|e| {
                    RuntimeError::ComponentRejected(format!("does not compile: {e:#}"))
                })?;
                self.compiles
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("tern_components_compiled_total").increment(1);
                if store.is_some() || self.code_dir.is_some() {
                    match component.serialize() {
                        Ok(code) => {
                            keep_local(&code);
                            if let Some(Err(e)) = store.map(|s| s.put_compiled(digest, &key, &code))
                            {
                                tracing::warn!(digest, error = %e, "cannot keep compiled code in the store");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(digest, error = %format!("{e:#}"), "cannot serialize compiled code")
                        }
                    }
                }
                Prepared::new(
                    &self.linker,
                    component,
                    digest.to_string(),
                    instrumented.slots.len(),
                )?
            }
        };
        let pre = Arc::new(pre);
        if self.compiled.len() >= COMPILED_CACHED_MAX {
            // Types in use keep their compiled code through `ActorType`.
            self.compiled.clear();
        }
        self.compiled.insert(digest.to_string(), pre.clone());
        Ok(pre)
    }
}

/// Refuses what tern cannot snapshot faithfully, with a message saying why.
///
/// The snapshot holds every core linear memory and every mutable global of
/// every core instance (captured through `crate::globals`). It does not
/// hold tables or anything inside a nested component. So this refuses:
/// - core modules, and nested components that define core modules (a
///   nested component of types and functions only is fine);
/// - shared memories and 64-bit memories;
/// - code that mutates tables (`table.set/grow/fill/copy/init`, `elem.drop`);
/// - mutable globals of type v128 or of a reference type;
/// - async, threads, streams and futures built-ins, and async lifts.
pub fn validate_component(bytes: &[u8]) -> Result<()> {
    let reject = |m: String| Err(RuntimeError::ComponentRejected(m));
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return reject("not a WebAssembly binary (missing the \\0asm header)".into());
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return reject(
            "this is a core WebAssembly module, not a component; build actors with `tern build`"
                .into(),
        );
    }
    let mut validator =
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default());
    validator
        .validate_all(bytes)
        .map_err(|e| RuntimeError::ComponentRejected(format!("invalid component: {e}")))?;

    // The encodings of the enclosing modules and components.
    let mut stack: Vec<wasmparser::Encoding> = Vec::new();
    let mut module_no = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload
            .map_err(|e| RuntimeError::ComponentRejected(format!("invalid component: {e}")))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if encoding == wasmparser::Encoding::Module {
                    module_no += 1;
                    if stack.len() > 1 {
                        return reject(format!(
                            "core module #{module_no} is defined inside a nested component; tern saves the state of the top-level component's core instances only"
                        ));
                    }
                }
                stack.push(encoding);
            }
            Payload::End(_) => {
                stack.pop();
            }
            Payload::MemorySection(mems) => {
                for m in mems {
                    let m = m.map_err(|e| RuntimeError::ComponentRejected(e.to_string()))?;
                    if m.shared {
                        return reject(format!(
                            "core module #{module_no} uses a shared memory (threads); tern cannot snapshot shared memories"
                        ));
                    }
                    if m.memory64 {
                        return reject(format!(
                            "core module #{module_no} uses a 64-bit memory; not supported"
                        ));
                    }
                }
            }
            Payload::GlobalSection(globals) => {
                for (i, g) in globals.into_iter().enumerate() {
                    let g = g.map_err(|e| RuntimeError::ComponentRejected(e.to_string()))?;
                    if g.ty.mutable
                        && let Err(what) = crate::globals::kind_of(g.ty.content_type)
                    {
                        return reject(format!(
                            "core module #{module_no} defines {what} (its global {i}); tern saves globals of type i32, i64, f32 and f64 only"
                        ));
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body
                    .get_operators_reader()
                    .map_err(|e| RuntimeError::ComponentRejected(e.to_string()))?;
                while !ops.eof() {
                    let op = ops
                        .read()
                        .map_err(|e| RuntimeError::ComponentRejected(e.to_string()))?;
                    let bad = match op {
                        Operator::TableSet { .. } => Some("table.set"),
                        Operator::TableGrow { .. } => Some("table.grow"),
                        Operator::TableFill { .. } => Some("table.fill"),
                        Operator::TableCopy { .. } => Some("table.copy"),
                        Operator::TableInit { .. } => Some("table.init"),
                        Operator::ElemDrop { .. } => Some("elem.drop"),
                        _ => None,
                    };
                    if let Some(bad) = bad {
                        return reject(format!(
                            "core module #{module_no} mutates a table ({bad}); tern snapshots linear memory only"
                        ));
                    }
                }
            }
            Payload::ComponentCanonicalSection(canon) => {
                for f in canon {
                    let f = f.map_err(|e| RuntimeError::ComponentRejected(e.to_string()))?;
                    match f {
                        CanonicalFunction::Lift { options, .. }
                        | CanonicalFunction::Lower { options, .. } => {
                            if options.iter().any(|o| {
                                matches!(o, CanonicalOption::Async | CanonicalOption::Callback(_))
                            }) {
                                return reject(
                                    "async lifts or lowers are not supported; actors run one synchronous turn at a time".into(),
                                );
                            }
                        }
                        CanonicalFunction::ResourceNew { .. }
                        | CanonicalFunction::ResourceDrop { .. }
                        | CanonicalFunction::ResourceRep { .. } => {}
                        other => {
                            let name = format!("{other:?}");
                            let name = name.split([' ', '{', '(']).next().unwrap_or("").to_string();
                            return reject(format!(
                                "the component uses the `{name}` built-in (async, threads, streams or futures); tern refuses these because their state cannot be snapshotted"
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
