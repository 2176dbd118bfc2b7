//! `tern new NAME`: a new actor crate, outside any workspace, that builds
//! with `tern build` as it stands.

use std::path::{Path, PathBuf};

/// Where the new crate gets `tern-actor-sdk` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sdk {
    /// A local checkout's `actor-sdk` directory.
    Path(PathBuf),
    /// A git repository holding tern.
    Git(String),
}

/// The SDK of the checkout this `tern` was built from, if it is still
/// there.
pub fn default_sdk() -> Option<Sdk> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../actor-sdk");
    dir.join("Cargo.toml")
        .is_file()
        .then(|| std::fs::canonicalize(&dir).ok())
        .flatten()
        .map(Sdk::Path)
}

/// Checks `name` is a crate name cargo accepts (and a sensible type name).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a crate name: use 1 to 64 ASCII letters, digits, `-` or `_`, starting with a letter"
        ))
    }
}

/// The crate's `Cargo.toml`.
pub fn cargo_toml(name: &str, sdk: &Sdk) -> String {
    let sdk = match sdk {
        Sdk::Path(p) => format!("{{ path = {:?} }}", p.display().to_string()),
        Sdk::Git(url) => format!("{{ git = {url:?} }}"),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# An actor crate of its own, not a member of an enclosing workspace.
[workspace]

[lib]
# cdylib: the component `tern build` makes; rlib: host unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
tern-actor-sdk = {sdk}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
"#
    )
}

const BUILD_RS: &str = r#"//! Give the actor a 64 KiB stack instead of Rust's default 1 MiB, so it
//! starts at 128 KiB of linear memory. Only affects wasm32 cdylibs.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo::rustc-link-arg-cdylib=-zstack-size=65536");
    }
}
"#;

const LIB_RS: &str = r##"//! A tern actor. Its state is this plain struct: tern persists the actor's
//! memory, so there is no serialization code to write. Build it with
//! `tern build .`, deploy it with `tern deploy TYPE target/.../NAME.wasm`.

use serde::{Deserialize, Serialize};
use tern_actor_sdk::{ActorError, actor};

/// The actor's whole state (`Default` is its state on its first call).
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    value: u64,
}

#[derive(Deserialize)]
pub struct Incr {
    by: u64,
}

#[derive(Serialize)]
pub struct Value {
    value: u64,
}

impl State {
    fn incr(&mut self, req: Incr) -> Result<Value, ActorError> {
        self.value = self
            .value
            .checked_add(req.by)
            .ok_or_else(|| ActorError::failed_precondition("the value would overflow"))?;
        Ok(Value { value: self.value })
    }

    fn get(&mut self) -> Result<Value, ActorError> {
        Ok(Value { value: self.value })
    }
}

actor!(State { json incr, json0 get });

#[cfg(test)]
mod tests {
    use super::*;
    use tern_actor_sdk::Actor;

    #[test]
    fn incr_adds() {
        let mut s = State::default();
        assert_eq!(s.dispatch("incr", br#"{"by": 2}"#).unwrap(), br#"{"value":2}"#);
        assert_eq!(s.dispatch("get", b"").unwrap(), br#"{"value":2}"#);
    }
}
"##;

/// Writes the crate `name` into `dir` (which must not exist, or be empty).
/// Returns the files written.
pub fn scaffold(dir: &Path, name: &str, sdk: &Sdk) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} exists and is not empty; choose another name or --dir",
            dir.display()
        ));
    }
    let files = [
        (dir.join("Cargo.toml"), cargo_toml(name, sdk)),
        (dir.join("build.rs"), BUILD_RS.to_string()),
        (dir.join("src/lib.rs"), LIB_RS.to_string()),
        (dir.join(".gitignore"), "/target\n".to_string()),
    ];
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["counter", "my-actor", "a1_b"] {
            check_name(good).unwrap();
        }
        for bad in ["", "1abc", "a b", "../x", "ä"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"").unwrap();
        let e = scaffold(
            d.path(),
            "a",
            &Sdk::Git("https://example.invalid/tern".into()),
        )
        .unwrap_err();
        assert!(e.contains("not empty"), "{e}");
    }

    #[test]
    fn cargo_toml_names_the_sdk() {
        let t = cargo_toml("a", &Sdk::Git("https://example.invalid/tern".into()));
        assert!(
            t.contains(r#"tern-actor-sdk = { git = "https://example.invalid/tern" }"#),
            "{t}"
        );
        assert!(t.contains("[workspace]"));
    }
}
