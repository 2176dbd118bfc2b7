//! Instance state beyond linear memory: the mutable globals of every core
//! instance of a component.
//!
//! tern owns a component's linear memories (`hostmem`), so it reads and
//! writes them directly. Globals live inside wasmtime's core instances,
//! which a host cannot reach through the component API. So, before
//! compiling a component, [`instrument`] rewrites it the way
//! `wasmtime-wizer` instruments components for snapshots, adding setters
//! as well as getters:
//! - every core module that defines mutable globals exports each of them as
//!   `__tern_global_<index>`;
//! - an accessor core module, appended to the component, imports those
//!   globals from every core instance of such a module and defines one
//!   getter (`() -> i64`, the raw bits) and one setter (`(i64)`) per global;
//! - each is lifted and exported from the component as
//!   `tern-global-get-g<n>` / `tern-global-set-g<n>` (`func() -> u64`,
//!   `func(value: u64)`), `n` counting [`Slot`]s in a fixed order: core
//!   instances by index, then each instance's globals by index.
//!
//! After a turn the runtime reads every global (a snapshot holds them next
//! to the memory pages); before the first turn of a restore it writes them
//! back. The order depends only on the component's bytes, so every POP and
//! every build of tern agrees on it.
//!
//! What cannot be captured is refused by [`crate::engine::validate_component`]
//! before instrumentation; this module refuses only shapes it cannot
//! rewrite (modules reached other than by a module section, nested
//! components holding core modules), with a message that says so.

use wasm_encoder as enc;
use wasmparser::{Parser, Payload};

use crate::error::{Result, RuntimeError};

/// The export name of a module's mutable global `i`.
pub const GLOBAL_EXPORT_PREFIX: &str = "__tern_global_";
/// The component export that reads global slot `n` (suffix `n`).
pub const GET_EXPORT_PREFIX: &str = "tern-global-get-g";
/// The component export that writes global slot `n` (suffix `n`).
pub const SET_EXPORT_PREFIX: &str = "tern-global-set-g";
/// Most mutable globals a component may have (CPython's has about 500).
pub const GLOBALS_MAX: usize = 16_384;

/// The value type of a captured global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalKind {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

/// One captured global: which core instance, which global of its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The core instance's index in the component.
    pub instance: u32,
    /// The global's index in its module.
    pub global: u32,
    /// Its type.
    pub kind: GlobalKind,
}

/// A component rewritten so its globals can be read and written.
#[derive(Debug)]
pub struct Instrumented {
    /// The component to compile.
    pub bytes: Vec<u8>,
    /// Every captured global, in slot order.
    pub slots: Vec<Slot>,
}

fn rejected(m: impl Into<String>) -> RuntimeError {
    RuntimeError::ComponentRejected(m.into())
}

fn parse_err(e: wasmparser::BinaryReaderError) -> RuntimeError {
    rejected(format!("invalid component: {e}"))
}

/// The kind of a mutable global, or why it cannot be captured.
pub fn kind_of(ty: wasmparser::ValType) -> std::result::Result<GlobalKind, String> {
    match ty {
        wasmparser::ValType::I32 => Ok(GlobalKind::I32),
        wasmparser::ValType::I64 => Ok(GlobalKind::I64),
        wasmparser::ValType::F32 => Ok(GlobalKind::F32),
        wasmparser::ValType::F64 => Ok(GlobalKind::F64),
        wasmparser::ValType::V128 => Err("a mutable v128 global".into()),
        wasmparser::ValType::Ref(_) => Err(
            "a mutable reference-typed global (it holds a host or table reference, which has no bytes to save)".into(),
        ),
    }
}

/// The mutable globals a core module defines: (index, kind).
fn module_globals(module: &[u8]) -> Result<Vec<(u32, GlobalKind)>> {
    let mut imported = 0u32;
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(parse_err)? {
            Payload::ImportSection(imports) => {
                for imp in imports.into_imports() {
                    if let wasmparser::TypeRef::Global(_) = imp.map_err(parse_err)?.ty {
                        imported += 1;
                    }
                }
            }
            Payload::GlobalSection(globals) => {
                for (i, g) in globals.into_iter().enumerate() {
                    let g = g.map_err(parse_err)?;
                    if g.ty.mutable {
                        let kind = kind_of(g.ty.content_type).map_err(|what| {
                            rejected(format!(
                                "a core module defines {what}; tern cannot save it in a snapshot"
                            ))
                        })?;
                        out.push((imported + i as u32, kind));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn export_kind(k: wasmparser::ExternalKind) -> Result<enc::ExportKind> {
    Ok(match k {
        wasmparser::ExternalKind::Func => enc::ExportKind::Func,
        wasmparser::ExternalKind::Table => enc::ExportKind::Table,
        wasmparser::ExternalKind::Memory => enc::ExportKind::Memory,
        wasmparser::ExternalKind::Global => enc::ExportKind::Global,
        wasmparser::ExternalKind::Tag => enc::ExportKind::Tag,
        wasmparser::ExternalKind::FuncExact => {
            return Err(rejected(
                "a core module exports an exact function type (custom descriptors); not supported",
            ));
        }
    })
}

/// `module` with each of `globals` exported as `__tern_global_<index>`.
fn export_globals(module: &[u8], globals: &[(u32, GlobalKind)]) -> Result<Vec<u8>> {
    let ours = |exports: &mut enc::ExportSection| {
        for (g, _) in globals {
            exports.export(
                &format!("{GLOBAL_EXPORT_PREFIX}{g}"),
                enc::ExportKind::Global,
                *g,
            );
        }
    };
    let mut out = enc::Module::new();
    let mut exported = false;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(parse_err)?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = enc::ExportSection::new();
            for e in reader.clone() {
                let e = e.map_err(parse_err)?;
                if e.name.starts_with(GLOBAL_EXPORT_PREFIX) {
                    return Err(rejected(format!(
                        "a core module already exports `{}`, a name tern reserves",
                        e.name
                    )));
                }
                exports.export(e.name, export_kind(e.kind)?, e.index);
            }
            ours(&mut exports);
            out.section(&exports);
            exported = true;
            continue;
        }
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // The export section comes before start (8), element (9), data
        // count (12), code (10) and data (11).
        if !exported && matches!(id, 8..=12) {
            let mut exports = enc::ExportSection::new();
            ours(&mut exports);
            out.section(&exports);
            exported = true;
        }
        out.section(&enc::RawSection {
            id,
            data: &module[range],
        });
    }
    if !exported {
        let mut exports = enc::ExportSection::new();
        ours(&mut exports);
        out.section(&exports);
    }
    Ok(out.finish())
}

/// The accessor core module: imports every slot's global from module
/// `"<instance>"`, exports `get<n>` and `set<n>`.
fn accessor_module(slots: &[Slot]) -> Vec<u8> {
    let mut types = enc::TypeSection::new();
    types.ty().function([], [enc::ValType::I64]);
    types.ty().function([enc::ValType::I64], []);
    let mut imports = enc::ImportSection::new();
    for s in slots {
        let val_type = match s.kind {
            GlobalKind::I32 => enc::ValType::I32,
            GlobalKind::I64 => enc::ValType::I64,
            GlobalKind::F32 => enc::ValType::F32,
            GlobalKind::F64 => enc::ValType::F64,
        };
        imports.import(
            &s.instance.to_string(),
            &format!("{GLOBAL_EXPORT_PREFIX}{}", s.global),
            enc::GlobalType {
                val_type,
                mutable: true,
                shared: false,
            },
        );
    }
    let mut funcs = enc::FunctionSection::new();
    let mut exports = enc::ExportSection::new();
    let mut code = enc::CodeSection::new();
    for (n, s) in slots.iter().enumerate() {
        let g = n as u32;
        funcs.function(0);
        funcs.function(1);
        exports.export(&format!("get{n}"), enc::ExportKind::Func, 2 * g);
        exports.export(&format!("set{n}"), enc::ExportKind::Func, 2 * g + 1);
        let mut get = enc::Function::new([]);
        get.instructions().global_get(g);
        match s.kind {
            GlobalKind::I32 => {
                get.instructions().i64_extend_i32_u();
            }
            GlobalKind::I64 => {}
            GlobalKind::F32 => {
                get.instructions().i32_reinterpret_f32().i64_extend_i32_u();
            }
            GlobalKind::F64 => {
                get.instructions().i64_reinterpret_f64();
            }
        }
        get.instructions().end();
        code.function(&get);
        let mut set = enc::Function::new([]);
        set.instructions().local_get(0);
        match s.kind {
            GlobalKind::I32 => {
                set.instructions().i32_wrap_i64();
            }
            GlobalKind::I64 => {}
            GlobalKind::F32 => {
                set.instructions().i32_wrap_i64().f32_reinterpret_i32();
            }
            GlobalKind::F64 => {
                set.instructions().f64_reinterpret_i64();
            }
        }
        set.instructions().global_set(g).end();
        code.function(&set);
    }
    let mut m = enc::Module::new();
    m.section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&exports)
        .section(&code);
    m.finish()
}

/// Rewrites `bytes` (a validated component) so that every core instance's
/// mutable globals can be read and written from the host (see the module
/// docs). A component without mutable globals comes back unchanged.
pub fn instrument(bytes: &[u8]) -> Result<Instrumented> {
    let types = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default())
        .validate_all(bytes)
        .map_err(|e| rejected(format!("invalid component: {e}")))?;
    let types = types.as_ref();

    // Top-level sections, in order; core modules (their byte ranges); core
    // instances (the module each instantiates, if any).
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    let mut modules: Vec<std::ops::Range<usize>> = Vec::new();
    let mut instances: Vec<Option<u32>> = Vec::new();
    let mut depth = 0usize;
    // Inside a nested component (depth of its start), if any.
    let mut nested_at: Option<usize> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(parse_err)?;
        match &payload {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth > 1 && *encoding == wasmparser::Encoding::Module && nested_at.is_some() {
                    return Err(rejected(
                        "a nested component defines a core module; tern can save the state of core instances of the top-level component only",
                    ));
                }
                if depth == 2 && *encoding == wasmparser::Encoding::Component {
                    nested_at = Some(depth);
                }
                continue;
            }
            Payload::End(_) => {
                if nested_at == Some(depth) {
                    nested_at = None;
                }
                depth -= 1;
                continue;
            }
            _ => {}
        }
        if depth != 1 {
            continue;
        }
        match &payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => modules.push(unchecked_range.clone()),
            Payload::InstanceSection(reader) => {
                for inst in reader.clone() {
                    instances.push(match inst.map_err(parse_err)? {
                        wasmparser::Instance::Instantiate { module_index, .. } => {
                            Some(module_index)
                        }
                        wasmparser::Instance::FromExports(_) => None,
                    });
                }
            }
            _ => {}
        }
        if let Some(section) = payload.as_section() {
            sections.push(section);
        }
    }
    if modules.len() != types.module_count() as usize
        || instances.len() != types.core_instance_count() as usize
    {
        return Err(rejected(
            "the component imports or aliases core modules; tern saves the state of the core modules it defines only",
        ));
    }

    let per_module: Vec<Vec<(u32, GlobalKind)>> = modules
        .iter()
        .map(|r| module_globals(&bytes[r.clone()]))
        .collect::<Result<_>>()?;
    let mut slots = Vec::new();
    for (i, m) in instances.iter().enumerate() {
        if let Some(m) = m {
            for &(global, kind) in &per_module[*m as usize] {
                slots.push(Slot {
                    instance: i as u32,
                    global,
                    kind,
                });
            }
        }
    }
    if slots.is_empty() {
        return Ok(Instrumented {
            bytes: bytes.to_vec(),
            slots,
        });
    }
    if slots.len() > GLOBALS_MAX {
        return Err(rejected(format!(
            "the component's core instances hold {} mutable globals, over tern's limit of {GLOBALS_MAX}",
            slots.len()
        )));
    }

    let mut out = enc::Component::new();
    let mut module_no = 0usize;
    for (id, range) in &sections {
        if *id == 1 {
            // A core module section: the module, with its globals exported.
            let globals = &per_module[module_no];
            let module = &bytes[modules[module_no].clone()];
            module_no += 1;
            if !globals.is_empty() {
                let rewritten = export_globals(module, globals)?;
                out.section(&enc::RawSection {
                    id: 1,
                    data: &rewritten,
                });
                continue;
            }
        }
        out.section(&enc::RawSection {
            id: *id,
            data: &bytes[range.clone()],
        });
    }

    // The accessor: a module, its instance, its functions lifted, exported.
    let accessor = accessor_module(&slots);
    out.section(&enc::RawSection {
        id: 1,
        data: &accessor,
    });
    let accessor_module = types.module_count();
    let mut used: Vec<u32> = slots.iter().map(|s| s.instance).collect();
    used.dedup();
    let mut insts = enc::InstanceSection::new();
    insts.instantiate(
        accessor_module,
        used.iter()
            .map(|i| (i.to_string(), enc::ModuleArg::Instance(*i)))
            .collect::<Vec<_>>(),
    );
    out.section(&insts);
    let accessor_instance = types.core_instance_count();
    let mut aliases = enc::ComponentAliasSection::new();
    for n in 0..slots.len() {
        for name in [format!("get{n}"), format!("set{n}")] {
            aliases.alias(enc::Alias::CoreInstanceExport {
                instance: accessor_instance,
                kind: enc::ExportKind::Func,
                name: &name,
            });
        }
    }
    out.section(&aliases);
    let core_funcs = types.function_count();
    let mut fn_types = enc::ComponentTypeSection::new();
    fn_types
        .function()
        .params(std::iter::empty::<(&str, enc::ComponentValType)>())
        .result(Some(enc::PrimitiveValType::U64.into()));
    fn_types
        .function()
        .params([("value", enc::PrimitiveValType::U64)])
        .result(None);
    out.section(&fn_types);
    let (get_ty, set_ty) = (
        types.component_type_count(),
        types.component_type_count() + 1,
    );
    let mut canon = enc::CanonicalFunctionSection::new();
    for n in 0..slots.len() as u32 {
        canon.lift(core_funcs + 2 * n, get_ty, []);
        canon.lift(core_funcs + 2 * n + 1, set_ty, []);
    }
    out.section(&canon);
    let funcs = types.component_function_count();
    let mut exports = enc::ComponentExportSection::new();
    for n in 0..slots.len() as u32 {
        exports.export(
            format!("{GET_EXPORT_PREFIX}{n}"),
            enc::ComponentExportKind::Func,
            funcs + 2 * n,
            None,
        );
        exports.export(
            format!("{SET_EXPORT_PREFIX}{n}"),
            enc::ComponentExportKind::Func,
            funcs + 2 * n + 1,
            None,
        );
    }
    out.section(&exports);
    let bytes = out.finish();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default())
        .validate_all(&bytes)
        .map_err(|e| {
            RuntimeError::Internal(format!(
                "tern's instrumentation of the component's globals produced an invalid component ({e}); please report this"
            ))
        })?;
    Ok(Instrumented { bytes, slots })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessor_converts_every_kind_both_ways() {
        let kinds = [
            GlobalKind::I32,
            GlobalKind::I64,
            GlobalKind::F32,
            GlobalKind::F64,
        ];
        let slots: Vec<Slot> = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| Slot {
                instance: 0,
                global: i as u32,
                kind,
            })
            .collect();
        let m = accessor_module(&slots);
        wasmparser::Validator::new()
            .validate_all(&m)
            .expect("the accessor module is valid");
    }
}
