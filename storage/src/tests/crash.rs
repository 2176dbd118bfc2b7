//! `kill -9` in the middle of a sqlite write loop loses no committed
//! transaction and leaves no transaction half-applied.
//!
//! The parent runs this very test binary again as a child (selected by
//! `TERN_CRASH_CHILD_DB`), which commits numbered transactions forever and
//! prints each number after its commit returned. The parent reads some of
//! those lines, SIGKILLs the child mid-loop, reopens the file and checks.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::Store;

const CHILD_ENV: &str = "TERN_CRASH_CHILD_DB";
const KEYS_PER_TXN: u64 = 5;
const LINES_BEFORE_KILL: u64 = 15;
const ROUNDS: usize = 3;

fn key(n: u64, k: u64) -> Vec<u8> {
    let mut v = b"crash/".to_vec();
    v.extend_from_slice(&n.to_be_bytes());
    v.extend_from_slice(&k.to_be_bytes());
    v
}

fn value(n: u64, k: u64) -> Vec<u8> {
    format!("{n}:{k}:").repeat(200).into_bytes()
}

/// Child mode: does nothing unless started by `sqlite_crash_consistency`.
#[test]
fn sqlite_crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&format!("sqlite:{path}")).expect("child opens the db");
    let mut out = std::io::stdout().lock();
    let first = last_committed(&store) + 1;
    for n in first.. {
        store
            .kv()
            .transact(|tx| {
                for k in 0..KEYS_PER_TXN {
                    tx.set(&key(n, k), &value(n, k));
                }
                tx.set(b"crash/last", &n.to_be_bytes());
                Ok(())
            })
            .expect("child commit");
        // Written straight to fd 1, bypassing the test harness capture.
        writeln!(out, "COMMITTED {n}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}

fn last_committed(store: &Store) -> u64 {
    store
        .kv()
        .read(|tx| tx.get(b"crash/last"))
        .unwrap()
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
        .unwrap_or(0)
}

/// Runs the child until it acknowledged `LINES_BEFORE_KILL` more commits,
/// then SIGKILLs it while it keeps writing. Returns the last acknowledged.
fn run_and_kill(db: &std::path::Path) -> u64 {
    let name = format!(
        "{}::sqlite_crash_child",
        module_path!().trim_start_matches("tern_storage::")
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (mut first, mut last_acked) = (None, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        if let Some(n) = line.strip_prefix("COMMITTED ") {
            last_acked = n.trim().parse::<u64>().unwrap();
            let first = *first.get_or_insert(last_acked);
            if last_acked >= first + LINES_BEFORE_KILL {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL child"); // std sends SIGKILL on unix
    let status = child.wait().unwrap();
    assert!(
        first.is_some_and(|f| last_acked >= f + LINES_BEFORE_KILL),
        "child stopped early after acknowledging {last_acked} ({status:?})"
    );
    assert!(
        !status.success(),
        "child was killed, not finished: {status:?}"
    );
    last_acked
}

#[test]
fn sqlite_crash_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    for round in 0..ROUNDS {
        let last_acked = run_and_kill(&db);
        let store = Store::open(&format!("sqlite:{}", db.display())).expect("reopen after crash");
        let durable = last_committed(&store);
        assert!(
            durable >= last_acked,
            "round {round}: acknowledged txn {last_acked} lost (last durable {durable})"
        );
        let rows = store
            .kv()
            .read(|tx| tx.get_range(b"crash/", b"crash0", None, false))
            .unwrap();
        let mut seen = std::collections::BTreeMap::<u64, u64>::new();
        for (k, v) in rows {
            if k == b"crash/last" {
                continue;
            }
            let n = u64::from_be_bytes(k[6..14].try_into().unwrap());
            let i = u64::from_be_bytes(k[14..22].try_into().unwrap());
            assert_eq!(v, value(n, i), "txn {n} key {i} has the wrong value");
            *seen.entry(n).or_default() += 1;
        }
        for n in 1..=durable {
            assert_eq!(
                seen.get(&n).copied(),
                Some(KEYS_PER_TXN),
                "round {round}: txn {n} is missing or partial (last acknowledged {last_acked})"
            );
        }
        assert!(
            seen.keys().all(|&n| n <= durable),
            "round {round}: a txn newer than crash/last is visible: not atomic"
        );
    }
}

const MP_CHILD_ENV: &str = "TERN_MP_CHILD_DB";
const MP_INCREMENTS: u64 = 50;

/// Child mode of `sqlite_two_processes_no_lost_update`.
#[test]
fn sqlite_increment_child() {
    let Ok(path) = std::env::var(MP_CHILD_ENV) else {
        return;
    };
    let store = Store::open(&format!("sqlite:{path}")).expect("child opens the db");
    for _ in 0..MP_INCREMENTS {
        store
            .kv()
            .transact(|tx| {
                let n = tx
                    .get(b"mp/counter")?
                    .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                    .unwrap_or(0);
                std::thread::yield_now();
                tx.set(b"mp/counter", &(n + 1).to_be_bytes());
                Ok(())
            })
            .expect("child increment");
    }
}

/// Several processes share one sqlite file: their read-modify-write
/// transactions serialize (waits, not failures) and no update is lost.
#[test]
fn sqlite_two_processes_no_lost_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mp.db");
    Store::open(&format!("sqlite:{}", db.display())).unwrap(); // create schema
    let name = format!(
        "{}::sqlite_increment_child",
        module_path!().trim_start_matches("tern_storage::")
    );
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &name, "--test-threads=1"])
                .env(MP_CHILD_ENV, &db)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "child failed");
    }
    let store = Store::open(&format!("sqlite:{}", db.display())).unwrap();
    let n = store
        .kv()
        .read(|tx| tx.get(b"mp/counter"))
        .unwrap()
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()));
    assert_eq!(n, Some(2 * MP_INCREMENTS));
}
