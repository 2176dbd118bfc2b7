//! The command line answers `--help` and refuses bad flags clearly. (This
//! test also makes `cargo test --workspace` build `target/debug/doom-lobby`,
//! which `tests/tests/doom_lobby.rs` runs.)

use std::process::Command;

fn doom_lobby(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_doom-lobby"))
        .args(args)
        .output()
        .expect("run doom-lobby")
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["demo", "--help"][..],
        &["loadtest", "--help"][..],
    ] {
        let out = doom_lobby(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: doom-lobby"), "{args:?}: {text}");
    }
    let text = String::from_utf8_lossy(&doom_lobby(&["loadtest", "--help"]).stdout).to_string();
    for flag in [
        "--players",
        "--duration",
        "--kill-pops",
        "--report",
        "--cluster",
    ] {
        assert!(text.contains(flag), "loadtest --help lacks {flag}: {text}");
    }
}

#[test]
fn bad_flags_are_refused() {
    let out = doom_lobby(&["loadtest", "--players", "3"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--report"),
        "{out:?}"
    );
    let out = doom_lobby(&[
        "loadtest",
        "--players",
        "0",
        "--report",
        "/dev/null",
        "--cluster",
        "/nonexistent/cluster.json",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--players must be at least 1"), "{err}");
}
