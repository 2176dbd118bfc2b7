//! Building actors written in Python and JavaScript into components.
//!
//! [`build_actor`] recognizes what a directory holds and builds it:
//! - **Rust**: a `Cargo.toml` (see [`crate::build::build_guest_with`]);
//! - **Python**: an `app.py`, or a `pyproject.toml` that names the
//!   `tern:actor` world (its module is `[tool.tern] module = "..."`, else
//!   `app`): built by `componentize-py` with `--stub-wasi`, with tern's
//!   helper `tern_actor` (`actor-sdk/python/tern_actor.py`) on the path;
//! - **JavaScript**: a `package.json` and its module (`"main"`, else
//!   `app.js`, else `index.js`): built by `componentize-js` with every
//!   WASI feature disabled. Unless the module exports `handle` itself,
//!   tern's helper (`actor-sdk/js/tern-actor.js`) is put in front of it
//!   (componentize-js takes one module; the helper gives it `actor`,
//!   `fail`, `log`, `call`, ...).
//!
//! Both tools get the `tern:actor` WIT that this binary carries, written
//! next to the output. The component lands in `DIR/target/tern/NAME.wasm`.
//! A missing tool is an error that says how to install it; its path can be
//! given with `TERN_COMPONENTIZE_PY` / `TERN_COMPONENTIZE_JS`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::BuildError;

/// The tern:actor WIT, as built into this binary.
pub const ACTOR_WIT: &str = include_str!("../../../actor-sdk/wit/actor.wit");
/// tern's Python helper module.
pub const PYTHON_HELPER: &str = include_str!("../../../actor-sdk/python/tern_actor.py");
/// tern's JavaScript helper, put in front of a module.
pub const JS_HELPER: &str = include_str!("../../../actor-sdk/js/tern-actor.js");
/// The world an actor implements.
pub const WORLD: &str = "actor";
/// The componentize-py version tern is tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The componentize-js version tern is tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// Overrides the componentize-py program.
pub const COMPONENTIZE_PY_ENV: &str = "TERN_COMPONENTIZE_PY";
/// Overrides the componentize-js program.
pub const COMPONENTIZE_JS_ENV: &str = "TERN_COMPONENTIZE_JS";
/// The WASI features componentize-js leaves out (tern offers none of them;
/// actors use the host's clock and randomness).
pub const JS_DISABLED_FEATURES: &[&str] = &["stdio", "random", "clocks", "http", "fetch-event"];

/// The language of an actor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Language {
    /// A cargo crate.
    Rust,
    /// A Python module (its name).
    Python(String),
    /// A JavaScript module (its file, relative to the directory).
    JavaScript(PathBuf),
}

/// What `dir` holds, or why it is not an actor.
pub fn detect(dir: &Path) -> Result<Language, BuildError> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(Language::Rust);
    }
    let pyproject = dir.join("pyproject.toml");
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject)?;
        if text.contains("tern:actor") || text.contains("[tool.tern]") {
            return Ok(Language::Python(
                toml_module(&text).unwrap_or_else(|| "app".into()),
            ));
        }
    }
    if dir.join("app.py").is_file() {
        return Ok(Language::Python("app".into()));
    }
    let package = dir.join("package.json");
    if package.is_file() {
        let text = std::fs::read_to_string(&package)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BuildError::NotAnActor {
                dir: dir.to_path_buf(),
                why: format!("package.json is not JSON: {e}"),
            })?;
        let main = json["main"].as_str().map(PathBuf::from);
        let module = main
            .into_iter()
            .chain([PathBuf::from("app.js"), PathBuf::from("index.js")])
            .find(|m| dir.join(m).is_file())
            .ok_or_else(|| BuildError::NotAnActor {
                dir: dir.to_path_buf(),
                why: "package.json names no module that exists (\"main\", app.js or index.js)"
                    .into(),
            })?;
        return Ok(Language::JavaScript(module));
    }
    Err(BuildError::NotAnActor {
        dir: dir.to_path_buf(),
        why: "expected a Rust crate (Cargo.toml), a Python actor (app.py, or a pyproject.toml with [tool.tern]) or a JavaScript actor (package.json and its module)".into(),
    })
}

/// `module = "..."` under `[tool.tern]`, by a line scan (the only key read).
fn toml_module(text: &str) -> Option<String> {
    let mut in_table = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[tool.tern]";
        } else if in_table && let Some(v) = line.strip_prefix("module") {
            let v = v.trim_start().strip_prefix('=')?.trim();
            return Some(v.trim_matches(['"', '\'']).to_string());
        }
    }
    None
}

/// Builds the actor in `dir`, whatever its language; returns the
/// component's path. `features` apply to Rust crates only.
pub fn build_actor(dir: &Path, release: bool, features: &[&str]) -> Result<PathBuf, BuildError> {
    match detect(dir)? {
        Language::Rust => crate::build::build_guest_with(dir, release, features),
        lang => {
            if !features.is_empty() {
                return Err(BuildError::NotAnActor {
                    dir: dir.to_path_buf(),
                    why: "--features applies to Rust crates only".into(),
                });
            }
            build_interpreted(dir, &lang)
        }
    }
}

/// The output directory of an interpreted actor, with the WIT written in.
fn prepare(dir: &Path) -> Result<(PathBuf, PathBuf), BuildError> {
    let out = dir.join("target").join("tern");
    let wit = out.join("wit");
    std::fs::create_dir_all(&wit)?;
    std::fs::write(wit.join("actor.wit"), ACTOR_WIT)?;
    Ok((out, wit))
}

fn name_of(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "actor".into())
}

/// The program: `$env`, else `local` if it exists, else `name` on PATH.
fn tool(
    env: &str,
    local: Option<PathBuf>,
    name: &str,
    install: &str,
) -> Result<PathBuf, BuildError> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(local) = local.filter(|p| p.is_file()) {
        return Ok(local);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path.ok_or_else(|| BuildError::ToolMissing {
        tool: name.to_string(),
        install: format!("{install} (or set {env} to its path)"),
    })
}

fn build_interpreted(dir: &Path, lang: &Language) -> Result<PathBuf, BuildError> {
    // Absolute: the tools run in `dir`.
    let dir = &dir.canonicalize()?;
    let (out, wit) = prepare(dir)?;
    let component = out.join(format!("{}.wasm", name_of(dir)));
    let (name, mut cmd) = match lang {
        Language::Python(module) => {
            let program = tool(
                COMPONENTIZE_PY_ENV,
                None,
                "componentize-py",
                &format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}"),
            )?;
            let helper = out.join("py");
            std::fs::create_dir_all(&helper)?;
            std::fs::write(helper.join("tern_actor.py"), PYTHON_HELPER)?;
            let mut cmd = Command::new(&program);
            cmd.arg("-d")
                .arg(&wit)
                .args(["-w", WORLD, "componentize", "--stub-wasi", "-p"])
                .arg(dir)
                .arg("-p")
                .arg(&helper)
                .arg(module)
                .arg("-o")
                .arg(&component);
            ("componentize-py", cmd)
        }
        Language::JavaScript(module) => {
            let program = tool(
                COMPONENTIZE_JS_ENV,
                Some(dir.join("node_modules/.bin/componentize-js")),
                "componentize-js",
                &format!(
                    "npm install @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION} (in the actor's directory, or with -g)"
                ),
            )?;
            let source = std::fs::read_to_string(dir.join(module))?;
            let entry = if exports_handle(&source) {
                dir.join(module)
            } else {
                let entry = out.join("entry.js");
                std::fs::write(&entry, format!("{JS_HELPER}\n{source}"))?;
                entry
            };
            let mut cmd = Command::new(&program);
            cmd.arg(&entry)
                .arg("--wit")
                .arg(&wit)
                .args(["--world-name", WORLD, "-d"])
                .args(JS_DISABLED_FEATURES)
                .arg("-o")
                .arg(&component);
            ("componentize-js", cmd)
        }
        Language::Rust => unreachable!("Rust crates build with cargo"),
    };
    cmd.current_dir(dir);
    eprintln!("building {} with {name} ...", dir.display());
    let status = cmd.status().map_err(|source| BuildError::BuildSpawn {
        program: name.to_string(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::ToolFailed {
            tool: name.to_string(),
            status,
        });
    }
    Ok(component)
}

/// Whether a JavaScript module exports `handle` itself (then it is built
/// as is, without tern's helper).
fn exports_handle(source: &str) -> bool {
    source.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("export function handle") || l.starts_with("export const handle")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_each_language() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            detect(d.path()),
            Err(BuildError::NotAnActor { .. })
        ));
        std::fs::write(d.path().join("app.py"), "").unwrap();
        assert_eq!(detect(d.path()).unwrap(), Language::Python("app".into()));
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[project]\nname = \"x\"\n[tool.tern]\nmodule = \"bank\"\n",
        )
        .unwrap();
        assert_eq!(detect(d.path()).unwrap(), Language::Python("bank".into()));
        let j = tempfile::tempdir().unwrap();
        std::fs::write(j.path().join("package.json"), "{\"main\": \"lobby.js\"}").unwrap();
        assert!(matches!(
            detect(j.path()),
            Err(BuildError::NotAnActor { .. })
        ));
        std::fs::write(j.path().join("lobby.js"), "").unwrap();
        assert_eq!(
            detect(j.path()).unwrap(),
            Language::JavaScript("lobby.js".into())
        );
        std::fs::write(j.path().join("package.json"), "not json").unwrap();
        match detect(j.path()) {
            Err(e) => assert!(e.to_string().contains("not JSON"), "{e}"),
            Ok(l) => panic!("{l:?}"),
        }
    }

    #[test]
    fn missing_tool_says_how_to_install_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.py"), "").unwrap();
        let err = tool(
            "TERN_TEST_UNSET_TOOL_ENV",
            None,
            "no-such-componentize-tool",
            "pip install no-such-componentize-tool",
        )
        .unwrap_err();
        let m = err.to_string();
        assert!(m.contains("pip install no-such-componentize-tool"), "{m}");
        assert!(m.contains("TERN_TEST_UNSET_TOOL_ENV"), "{m}");
    }

    #[test]
    fn helper_goes_in_front_unless_the_module_exports_handle() {
        assert!(exports_handle("export function handle(m, p) {}"));
        assert!(!exports_handle("actor({ get() { return 1; } });"));
    }
}
