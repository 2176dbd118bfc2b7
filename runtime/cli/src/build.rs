//! Building actor crates into WebAssembly components.
//!
//! [`build_guest`] runs `cargo build --target wasm32-wasip2 --lib` for an
//! actor crate (a `cdylib`, see `tern-actor-sdk`) and returns the path of the
//! `.wasm` component it produced. It is what the CLI and the tests use to turn
//! `examples/counter` into something the runtime can deploy.
//!
//! - **Target directory.** Guests build in their own target directory so a
//!   guest build never waits on (or invalidates) the host build's lock: this
//!   matters when a test, run by `cargo test` (which holds the host target
//!   directory), builds a guest. In order of precedence:
//!   `$TERN_GUEST_TARGET_DIR` as is; `$CARGO_TARGET_DIR/guest` when
//!   `CARGO_TARGET_DIR` is set; otherwise `<workspace root>/target/guest`.
//! - **Stack size.** `-C link-arg=-zstack-size=65536` is appended to
//!   `CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS` (64 KiB of shadow stack instead of
//!   1 MiB, so a small actor starts at 128 KiB of linear memory). Cargo
//!   ignores that variable when `RUSTFLAGS` or `CARGO_ENCODED_RUSTFLAGS` is
//!   set, so the flag is appended to those too when they are.
//! - cargo's stderr (progress and rendered diagnostics) is streamed through to
//!   this process's stderr; the artifact path comes from cargo's JSON messages.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The guest target triple.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// The rustflags every guest is built with.
pub const GUEST_RUSTFLAGS: &str = "-C link-arg=-zstack-size=65536";

/// Overrides the guest target directory.
pub const GUEST_TARGET_DIR_ENV: &str = "TERN_GUEST_TARGET_DIR";

const TARGET_RUSTFLAGS_ENV: &str = "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS";

/// Why a guest build failed: the CLI crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `cargo` (or `rustc`) could not be started.
    #[error("could not run `{program}`: {source}")]
    BuildSpawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `crate_dir` has no `Cargo.toml`.
    #[error("{0} is not a cargo crate (no Cargo.toml)")]
    NotACrate(PathBuf),
    /// `cargo metadata` failed or said something unexpected.
    #[error("`cargo metadata` for {dir} failed: {message}")]
    CargoMetadata {
        /// The crate directory.
        dir: PathBuf,
        /// What went wrong (cargo's stderr or a parse error).
        message: String,
    },
    /// The crate has no `cdylib` library target.
    #[error(
        "crate `{package}` is not a cdylib, so it cannot be built into a component: \
         add `[lib] crate-type = [\"cdylib\", \"rlib\"]` to {manifest}"
    )]
    NotCdylib {
        /// The package name.
        package: String,
        /// Its Cargo.toml.
        manifest: PathBuf,
    },
    /// The `wasm32-wasip2` standard library is not installed.
    #[error(
        "the `{GUEST_TARGET}` target is not installed for this toolchain: \
         run `rustup target add {GUEST_TARGET}`"
    )]
    TargetMissing,
    /// cargo reported a failed build (its diagnostics went to stderr).
    #[error(
        "`cargo build --target {GUEST_TARGET}` of `{package}` failed ({status}); see cargo's output above"
    )]
    CargoFailed {
        /// The package name.
        package: String,
        /// cargo's exit status.
        status: ExitStatus,
    },
    /// cargo succeeded but reported no `.wasm` file for the cdylib.
    #[error("`cargo build` of `{package}` succeeded but reported no .wasm artifact for its cdylib")]
    NoArtifact {
        /// The package name.
        package: String,
    },
    /// Reading cargo's output failed, or a file of the build could not be
    /// read or written.
    #[error("build I/O: {0}")]
    BuildIo(#[from] std::io::Error),
    /// The directory holds no actor tern knows how to build.
    #[error("{dir} is not an actor tern can build: {why}")]
    NotAnActor {
        /// The directory.
        dir: PathBuf,
        /// What was expected or wrong.
        why: String,
    },
    /// The language's build tool is not installed.
    #[error("`{tool}` is needed to build this actor and was not found: {install}")]
    ToolMissing {
        /// The tool.
        tool: String,
        /// How to install it.
        install: String,
    },
    /// The language's build tool failed (its output went to stderr).
    #[error("`{tool}` failed ({status}); see its output above")]
    ToolFailed {
        /// The tool.
        tool: String,
        /// Its exit status.
        status: ExitStatus,
    },
}

/// What `cargo metadata` says about the crate to build.
#[derive(Debug)]
struct CrateInfo {
    package: String,
    package_id: String,
    manifest: PathBuf,
    workspace_root: PathBuf,
}

fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn crate_info(crate_dir: &Path) -> Result<CrateInfo, BuildError> {
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(crate_dir.to_path_buf()));
    }
    // cargo finds the workspace by walking up the real path.
    let manifest = manifest.canonicalize()?;
    let program = cargo_program();
    let out = Command::new(&program)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .current_dir(crate_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::BuildSpawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    let metadata_err = |message: String| BuildError::CargoMetadata {
        dir: crate_dir.to_path_buf(),
        message,
    };
    if !out.status.success() {
        return Err(metadata_err(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| metadata_err(format!("bad JSON: {e}")))?;
    let workspace_root = meta["workspace_root"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| metadata_err("no workspace_root".into()))?;
    let packages = meta["packages"]
        .as_array()
        .ok_or_else(|| metadata_err("no packages".into()))?;
    let pkg = packages
        .iter()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| same_file(Path::new(m), &manifest))
        })
        .ok_or_else(|| metadata_err(format!("no package with manifest {}", manifest.display())))?;
    let package = pkg["name"].as_str().unwrap_or_default().to_string();
    let package_id = pkg["id"].as_str().unwrap_or_default().to_string();
    let is_cdylib = pkg["targets"].as_array().into_iter().flatten().any(|t| {
        t["kind"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k.as_str() == Some("cdylib"))
    });
    if !is_cdylib {
        return Err(BuildError::NotCdylib { package, manifest });
    }
    Ok(CrateInfo {
        package,
        package_id,
        manifest,
        workspace_root,
    })
}

/// The target directory guests of the workspace at `workspace_root` build in.
pub fn guest_target_dir(workspace_root: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os(GUEST_TARGET_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("guest");
    }
    workspace_root.join("target").join("guest")
}

/// `existing` with `GUEST_RUSTFLAGS` appended (space-separated), unless it is
/// already there.
fn append_flags(existing: Option<&OsStr>, sep: &str) -> OsString {
    let ours = GUEST_RUSTFLAGS.replace(' ', sep);
    match existing
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|e| !e.trim().is_empty())
    {
        Some(e) if e.contains(&ours) => OsString::from(e),
        Some(e) => OsString::from(format!("{e}{sep}{ours}")),
        None => OsString::from(ours),
    }
}

/// Whether the toolchain's sysroot has the guest target's standard library.
/// `None` when it cannot tell (no `rustc` found).
fn target_installed() -> Option<bool> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(
        sysroot
            .join("lib")
            .join("rustlib")
            .join(GUEST_TARGET)
            .join("lib")
            .is_dir(),
    )
}

/// Build the actor crate at `crate_dir` (a `cdylib`) for `wasm32-wasip2` and
/// return the path of the component it produced.
///
/// See the [module docs](self) for the target directory and flags used.
pub fn build_guest(crate_dir: &Path, release: bool) -> Result<PathBuf, BuildError> {
    build_guest_with(crate_dir, release, &[])
}

/// [`build_guest`] with cargo features of the guest crate enabled. Each
/// set of features builds into its own target directory (`guest-<f1>-<f2>`
/// beside the default one), so builds of the same crate with different
/// features do not overwrite each other's component.
pub fn build_guest_with(
    crate_dir: &Path,
    release: bool,
    features: &[&str],
) -> Result<PathBuf, BuildError> {
    let info = crate_info(crate_dir)?;
    if target_installed() == Some(false) {
        return Err(BuildError::TargetMissing);
    }

    let program = cargo_program();
    let mut cmd = Command::new(&program);
    cmd.args([
        "build",
        "--lib",
        "--target",
        GUEST_TARGET,
        "--message-format=json-render-diagnostics",
    ])
    .arg("--manifest-path")
    .arg(&info.manifest)
    .args(["--package", &info.package]);
    if release {
        // Guests ship without debug info: smaller components, faster deploys.
        cmd.arg("--release")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    }
    let mut target_dir = guest_target_dir(&info.workspace_root);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
        let name = format!(
            "{}-{}",
            target_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "guest".into()),
            features.join("-")
        );
        target_dir.set_file_name(name);
    }
    cmd.current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env(
            TARGET_RUSTFLAGS_ENV,
            append_flags(std::env::var_os(TARGET_RUSTFLAGS_ENV).as_deref(), " "),
        );
    // These take precedence over the per-target variable: keep our flag.
    if let Some(v) = std::env::var_os("CARGO_ENCODED_RUSTFLAGS").filter(|v| !v.is_empty()) {
        cmd.env("CARGO_ENCODED_RUSTFLAGS", append_flags(Some(&v), "\u{1f}"));
    } else if let Some(v) =
        std::env::var_os("RUSTFLAGS").filter(|v| !v.to_string_lossy().trim().is_empty())
    {
        cmd.env("RUSTFLAGS", append_flags(Some(&v), " "));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let mut child = cmd.spawn().map_err(|source| BuildError::BuildSpawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;

    // Stream stderr through, watching for the missing-target diagnostic.
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut target_missing = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("target may not be installed")
                || (line.contains("can't find crate for `std`")
                    || line.contains("can't find crate for `core`"))
            {
                target_missing = true;
            }
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
        target_missing
    });

    let stdout = child.stdout.take().expect("stdout is piped");
    let mut artifact = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["package_id"] != info.package_id.as_str() {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k == "cdylib");
        if !is_cdylib {
            continue;
        }
        if let Some(wasm) = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
        {
            artifact = Some(PathBuf::from(wasm));
        }
    }
    let status = child.wait()?;
    let target_missing = stderr_thread.join().unwrap_or(false);
    if !status.success() {
        if target_missing {
            return Err(BuildError::TargetMissing);
        }
        return Err(BuildError::CargoFailed {
            package: info.package,
            status,
        });
    }
    artifact.ok_or(BuildError::NoArtifact {
        package: info.package,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_dir() -> PathBuf {
        // runtime/cli -> the workspace root.
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("runtime/cli is in the workspace")
            .to_path_buf()
    }

    #[test]
    fn builds_counter_component() {
        let wasm =
            build_guest(&workspace_dir().join("examples/counter"), true).expect("counter builds");
        assert_eq!(wasm.extension().and_then(|e| e.to_str()), Some("wasm"));
        let bytes = std::fs::read(&wasm).expect("read the component");
        // `\0asm`, then the component layer's version 0x0d and layer 1.
        assert_eq!(
            &bytes[..8],
            b"\0asm\x0d\x00\x01\x00",
            "{} is not a component",
            wasm.display()
        );
    }

    #[test]
    fn refuses_non_cdylib() {
        let err = build_guest(&workspace_dir().join("actor-sdk"), true).unwrap_err();
        assert!(
            matches!(err, BuildError::NotCdylib { ref package, .. } if package == "tern-actor-sdk"),
            "{err}"
        );
        assert!(err.to_string().contains("crate-type"), "{err}");
    }

    #[test]
    fn refuses_non_crate() {
        let err = build_guest(&workspace_dir().join("actor-sdk/wit"), false).unwrap_err();
        assert!(matches!(err, BuildError::NotACrate(_)), "{err}");
    }

    #[test]
    fn appends_flags() {
        assert_eq!(append_flags(None, " "), GUEST_RUSTFLAGS);
        assert_eq!(
            append_flags(Some(OsStr::new("-D warnings")), " "),
            "-D warnings -C link-arg=-zstack-size=65536"
        );
        assert_eq!(
            append_flags(Some(OsStr::new(GUEST_RUSTFLAGS)), " "),
            GUEST_RUSTFLAGS
        );
        assert_eq!(
            append_flags(Some(OsStr::new("-Dwarnings")), "\u{1f}"),
            "-Dwarnings\u{1f}-C\u{1f}link-arg=-zstack-size=65536"
        );
    }
}
