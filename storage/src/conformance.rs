//! The storage conformance suite, written once and instantiated per backend:
//! `conformance::memory::<case>`, `conformance::sqlite::<case>`, and, in
//! builds with the `fdb` feature, `conformance::fdb::<case>`, which runs
//! against the cluster named by `FDB_CLUSTER_FILE` (each test under its own
//! random key prefix, cleared before and after) and prints a skip line when
//! that variable is unset. Without the feature, `conformance::fdb::skipped_reason`
//! prints why the FoundationDB run did not happen.

use std::sync::{Arc, Barrier};

use crate::kv::{KeyValue, VALUE_BYTES_MAX};
use crate::tuple::range_end;
use crate::*;

/// A store under test, plus whatever keeps it alive.
pub(crate) struct Harness {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    #[cfg(feature = "fdb")]
    _fdb: Option<FdbCleanup>,
}

impl std::ops::Deref for Harness {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// A harness over any KV layer (tests of backend wrappers).
impl Harness {
    pub(crate) fn over(kv: Kv) -> Harness {
        Harness {
            store: Store::from_kv(kv, None),
            _dir: None,
            #[cfg(feature = "fdb")]
            _fdb: None,
        }
    }
}

pub(crate) fn memory() -> Harness {
    Harness {
        store: Store::memory(),
        _dir: None,
        #[cfg(feature = "fdb")]
        _fdb: None,
    }
}

pub(crate) fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("nested/dir/tern.db").display());
    Harness {
        store: Store::open(&url).expect("open sqlite"),
        _dir: Some(dir),
        #[cfg(feature = "fdb")]
        _fdb: None,
    }
}

/// Prints a skip line that shows in `cargo test` output even though the
/// harness captures test output: `println!` is captured (shown only with
/// `--nocapture`/`--show-output`), a direct write to the stderr handle is
/// not.
pub(crate) fn skip_notice(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Clears an FDB test's private key range when the test ends.
#[cfg(feature = "fdb")]
pub(crate) struct FdbCleanup(Arc<crate::kv::fdb::FdbBackend>);

#[cfg(feature = "fdb")]
impl Drop for FdbCleanup {
    fn drop(&mut self) {
        if let Err(e) = self.0.clear_own_prefix() {
            eprintln!("conformance::fdb: could not clear the test's key range: {e}");
        }
    }
}

/// A store on the FoundationDB cluster named by `FDB_CLUSTER_FILE`, under a
/// fresh random prefix (so runs against a shared cluster never collide), or
/// `None` after printing a visible skip line when the variable is unset.
#[cfg(feature = "fdb")]
pub(crate) fn fdb(test: &str) -> Option<Harness> {
    let Some(cluster) = std::env::var_os("FDB_CLUSTER_FILE").filter(|v| !v.is_empty()) else {
        skip_notice(&format!(
            "conformance::fdb::{test} skipped: FDB_CLUSTER_FILE is not set (point it at a cluster file to run the suite against FoundationDB)"
        ));
        return None;
    };
    let mut prefix = Vec::new();
    crate::tuple::pack_into(
        &mut prefix,
        &[
            crate::tuple::Elem::Str("tern_conformance"),
            crate::tuple::Elem::Int(crate::random_u64()),
        ],
    );
    let backend =
        crate::kv::fdb::FdbBackend::open_with_prefix(std::path::Path::new(&cluster), prefix)
            .expect("open the FoundationDB cluster named by FDB_CLUSTER_FILE");
    let backend = Arc::new(backend);
    backend
        .clear_own_prefix()
        .expect("clear the test's key range");
    Some(Harness {
        store: Store::from_kv(Kv::new(backend.clone()), None),
        _dir: None,
        _fdb: Some(FdbCleanup(backend)),
    })
}

// ------------------------------------------------------------- helpers

fn k(s: &str) -> Vec<u8> {
    let mut v = b"\x01test\x00".to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn keys_of(kvs: &[KeyValue]) -> Vec<Vec<u8>> {
    kvs.iter().map(|(k, _)| k.clone()).collect()
}

/// A page whose bytes depend on (seed, index), never all zero.
pub(crate) fn page(seed: u64, index: u32) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64 + 1);
    (0..PAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// A realistic guest page: zero except for three runs of [`page`] bytes
/// (like a stack frame, a few heap objects and some data after a small
/// turn), 384 non-zero bytes in all, at offsets that depend on the seed.
pub(crate) fn sparse_page(seed: u64, index: u32) -> Vec<u8> {
    let noise = page(seed, index);
    let mut p = vec![0u8; PAGE_SIZE];
    let shift = ((seed as usize).wrapping_add(index as usize) % 64) * 8;
    for start in [256 + shift, PAGE_SIZE / 2 + shift, PAGE_SIZE - 4096 + shift] {
        p[start..start + 128].copy_from_slice(&noise[start..start + 128]);
    }
    p
}

/// A page of full-range pseudo-random bytes (lz4 cannot shrink it).
pub(crate) fn random_page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut p = Vec::with_capacity(PAGE_SIZE);
    while p.len() < PAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes());
    }
    p
}

pub(crate) fn claim(store: &Store, actor: &str, pop: &str) -> ActivationRecord {
    store
        .claim(actor, pop, 1, &|_| true)
        .expect("claim should succeed")
}

pub(crate) fn meta() -> SnapshotMeta {
    SnapshotMeta {
        component_digest: "ab".repeat(32),
        engine_version: "test-engine-1".into(),
        globals: vec![65536, 7],
    }
}

/// A request for memory `len_pages` long changing `changed` pages.
pub(crate) fn req(
    actor: &str,
    epoch: u64,
    head: u64,
    len_pages: u32,
    changed: &[(u32, Vec<u8>)],
) -> CommitRequest {
    CommitRequest {
        actor: actor.into(),
        epoch,
        expected_head_seq: head,
        meta: meta(),
        memories: vec![MemoryDelta {
            len_bytes: len_pages as u64 * PAGE_SIZE as u64,
            changed_pages: changed.to_vec(),
        }],
        extra: vec![],
        ..Default::default()
    }
}

/// Applies `changed` onto an image model.
pub(crate) fn apply(image: &mut Vec<u8>, len_pages: u32, changed: &[(u32, Vec<u8>)]) {
    image.resize(len_pages as usize * PAGE_SIZE, 0);
    for (i, p) in changed {
        let off = *i as usize * PAGE_SIZE;
        image[off..off + PAGE_SIZE].copy_from_slice(p);
    }
}

fn raw_prefix(store: &Store, prefix: &[u8]) -> Vec<KeyValue> {
    store
        .kv()
        .read(|tx| tx.get_prefix(prefix))
        .expect("raw read")
}

// --------------------------------------------------------------- cases

pub(crate) fn range_reads_ordered_reverse_limited(h: &Harness) {
    let kv = h.kv();
    kv.transact(|tx| {
        for i in (0..20).rev() {
            tx.set(&k(&format!("r{i:02}")), format!("v{i}").as_bytes());
        }
        tx.set(&k("q"), b"before");
        tx.set(&k("s"), b"after");
        tx.set(&k("r"), b"prefix-of-range-keys");
        Ok(())
    })
    .unwrap();
    let (b, e) = (k("r00"), k("r99"));
    let all = kv.read(|tx| tx.get_range(&b, &e, None, false)).unwrap();
    let want: Vec<Vec<u8>> = (0..20).map(|i| k(&format!("r{i:02}"))).collect();
    assert_eq!(keys_of(&all), want, "forward range is in key order");
    assert_eq!(all[3].1, b"v3");
    let first5 = kv.read(|tx| tx.get_range(&b, &e, Some(5), false)).unwrap();
    assert_eq!(keys_of(&first5), want[..5].to_vec());
    let last3 = kv.read(|tx| tx.get_range(&b, &e, Some(3), true)).unwrap();
    assert_eq!(
        keys_of(&last3),
        vec![want[19].clone(), want[18].clone(), want[17].clone()],
        "reverse range starts at the end"
    );
    let rev_all = kv.read(|tx| tx.get_range(&b, &e, None, true)).unwrap();
    assert_eq!(rev_all.len(), 20);
    // End is exclusive, begin inclusive.
    let mid = kv
        .read(|tx| tx.get_range(&k("r05"), &k("r08"), None, false))
        .unwrap();
    assert_eq!(keys_of(&mid), want[5..8].to_vec());
    // Empty and inverted ranges.
    assert!(
        kv.read(|tx| tx.get_range(&e, &b, None, false))
            .unwrap()
            .is_empty()
    );
    assert!(
        kv.read(|tx| tx.get_range(&b, &e, Some(0), false))
            .unwrap()
            .is_empty()
    );
    // memcmp order: "r" < "r00" < ... < "s"; prefix range of "r" covers them all.
    let pre = kv
        .read(|tx| tx.get_range(&k("r"), &range_end(&k("r")), None, false))
        .unwrap();
    assert_eq!(pre.len(), 21);
    // Binary keys with 0x00 and 0xFF bytes order by memcmp.
    kv.transact(|tx| {
        tx.set(b"\x00", b"a");
        tx.set(b"\x00\x00", b"b");
        tx.set(b"\xff\xff", b"c");
        Ok(())
    })
    .unwrap();
    let bin = kv
        .read(|tx| tx.get_range(b"\x00", b"\x01", None, false))
        .unwrap();
    assert_eq!(keys_of(&bin), vec![b"\x00".to_vec(), b"\x00\x00".to_vec()]);
}

pub(crate) fn read_your_writes(h: &Harness) {
    let kv = h.kv();
    kv.transact(|tx| {
        tx.set(&k("a"), b"1");
        tx.set(&k("c"), b"old");
        Ok(())
    })
    .unwrap();
    let mut tx = kv.begin().unwrap();
    tx.set(&k("a"), b"2");
    assert_eq!(tx.get(&k("a")).unwrap().as_deref(), Some(&b"2"[..]));
    tx.clear(&k("a"));
    assert_eq!(tx.get(&k("a")).unwrap(), None);
    tx.set(&k("b"), b"x");
    tx.set(&k("d"), b"y");
    tx.clear_range(&k("b"), &k("d"));
    let r = tx.get_range(&k("a"), &k("z"), None, false).unwrap();
    assert_eq!(
        keys_of(&r),
        vec![k("d")],
        "clear_range hides own and stored keys"
    );
    tx.set(&k("c"), b"new");
    let r = tx.get_range(&k("a"), &k("z"), None, true).unwrap();
    assert_eq!(r, vec![(k("d"), b"y".to_vec()), (k("c"), b"new".to_vec())]);
    let r = tx.get_range(&k("a"), &k("z"), Some(1), false).unwrap();
    assert_eq!(keys_of(&r), vec![k("c")]);
    drop(tx); // rolled back
    assert_eq!(
        kv.read(|tx| tx.get(&k("a"))).unwrap().as_deref(),
        Some(&b"1"[..]),
        "a dropped transaction changes nothing"
    );
    assert_eq!(kv.read(|tx| tx.get(&k("d"))).unwrap(), None);
    // Committed: all of it at once.
    let mut tx = kv.begin().unwrap();
    tx.clear_range(&k("a"), &k("z"));
    tx.set(&k("e"), b"e");
    tx.commit().unwrap();
    let r = kv
        .read(|tx| tx.get_range(&k("a"), &k("z"), None, false))
        .unwrap();
    assert_eq!(r, vec![(k("e"), b"e".to_vec())]);
    // A read-only transaction refuses writes at commit.
    let mut ro = kv.begin_read().unwrap();
    ro.set(&k("nope"), b"1");
    assert!(matches!(
        ro.commit(),
        Err(StorageError::ReadOnlyTransaction)
    ));
}

pub(crate) fn conflicting_read_modify_write_no_lost_update(h: &Harness) {
    let threads = 4;
    let per_thread = 25;
    let barrier = Arc::new(Barrier::new(threads));
    std::thread::scope(|s| {
        for _ in 0..threads {
            let store = h.store.clone();
            let barrier = barrier.clone();
            s.spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    store
                        .kv()
                        .transact(|tx| {
                            let n = tx
                                .get(&k("counter"))?
                                .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                                .unwrap_or(0);
                            // Widen the window between read and write.
                            std::thread::yield_now();
                            tx.set(&k("counter"), &(n + 1).to_be_bytes());
                            Ok(())
                        })
                        .expect("increment");
                }
            });
        }
    });
    let n = h.kv().read(|tx| tx.get(&k("counter"))).unwrap().unwrap();
    assert_eq!(
        u64::from_be_bytes(n.try_into().unwrap()),
        (threads * per_thread) as u64,
        "no increment was lost"
    );
}

pub(crate) fn limits_enforced(h: &Harness) {
    let kv = h.kv();
    let r = kv.transact(|tx| {
        tx.set(&k("big"), &vec![1u8; VALUE_BYTES_MAX + 1]);
        Ok(())
    });
    assert!(
        matches!(r, Err(StorageError::LimitExceeded { what: "value", .. })),
        "{r:?}"
    );
    let r = kv.transact(|tx| {
        tx.set(&vec![b'k'; 10_001], b"");
        Ok(())
    });
    assert!(
        matches!(r, Err(StorageError::LimitExceeded { what: "key", .. })),
        "{r:?}"
    );
    let r = kv.transact(|tx| {
        for i in 0..110u32 {
            tx.set(&k(&format!("t{i:03}")), &vec![0u8; 99_000]);
        }
        Ok(())
    });
    assert!(
        matches!(
            r,
            Err(StorageError::LimitExceeded {
                what: "transaction",
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        kv.read(|tx| tx.get(&k("t000"))).unwrap(),
        None,
        "nothing applied"
    );
}

pub(crate) fn stale_epoch_commit_refused(h: &Harness) {
    let a = claim(h, "player/alice", "pop-a");
    assert_eq!(
        h.commit_snapshot(&req("player/alice", a.epoch, 0, 2, &[(0, page(1, 0))]))
            .unwrap(),
        1
    );
    // pop-b takes over: epoch 2. pop-a is now a zombie.
    let b = claim(h, "player/alice", "pop-b");
    assert_eq!(b.epoch, a.epoch + 1);
    assert_eq!(b.head_seq, 1, "claims keep the head");
    let zombie = h.commit_snapshot(&req("player/alice", a.epoch, 1, 2, &[(1, page(2, 1))]));
    match zombie {
        Err(StorageError::Fenced {
            actor,
            epoch_given,
            epoch_current,
        }) => {
            assert_eq!(
                (actor.as_str(), epoch_given, epoch_current),
                ("player/alice", a.epoch, b.epoch)
            );
        }
        other => panic!("zombie commit must be fenced, got {other:?}"),
    }
    // Also a big (staged) zombie commit is refused before writing anything.
    let before = raw_prefix(h, &keys::page_prefix("player/alice")).len();
    let big: Vec<(u32, Vec<u8>)> = (0..20).map(|i| (i, page(3, i))).collect();
    assert!(matches!(
        h.commit_snapshot(&req("player/alice", a.epoch, 1, 20, &big)),
        Err(StorageError::Fenced { .. })
    ));
    assert_eq!(
        raw_prefix(h, &keys::page_prefix("player/alice")).len(),
        before,
        "a zombie cannot stage"
    );
    // The new owner commits on top of head 1; a wrong head is refused.
    assert!(matches!(
        h.commit_snapshot(&req("player/alice", b.epoch, 0, 2, &[(1, page(4, 1))])),
        Err(StorageError::HeadMismatch {
            expected: 0,
            current: 1,
            ..
        })
    ));
    assert_eq!(
        h.commit_snapshot(&req("player/alice", b.epoch, 1, 2, &[(1, page(4, 1))]))
            .unwrap(),
        2
    );
    let s = h.load_snapshot("player/alice").unwrap().unwrap();
    assert_eq!(s.seq, 2);
    assert_eq!(s.epoch, b.epoch);
    assert_eq!(&s.memories[0][..PAGE_SIZE], &page(1, 0)[..]);
    assert_eq!(&s.memories[0][PAGE_SIZE..], &page(4, 1)[..]);
    // After release, even the right epoch is fenced.
    h.release("player/alice", b.epoch).unwrap();
    assert!(matches!(
        h.commit_snapshot(&req("player/alice", b.epoch, 2, 2, &[])),
        Err(StorageError::Fenced { .. })
    ));
    // An actor that was never claimed cannot be committed to.
    assert!(matches!(
        h.commit_snapshot(&req("player/nobody", 1, 0, 1, &[])),
        Err(StorageError::Fenced {
            epoch_current: 0,
            ..
        })
    ));
}

pub(crate) fn claim_release_epochs(h: &Harness) {
    let never = |_: &ActivationRecord| false;
    assert_eq!(h.get_activation("m/1").unwrap(), None);
    let a = h.claim("m/1", "pop-a", 100, &never).unwrap();
    assert_eq!(
        (a.epoch, a.pop.as_str(), a.active, a.head_seq, a.since_ms),
        (1, "pop-a", true, 0, 100)
    );
    assert_eq!(
        h.list_activations_by_pop("pop-a").unwrap(),
        vec!["m/1".to_string()]
    );
    match h.claim("m/1", "pop-b", 200, &never) {
        Err(StorageError::HeldElsewhere { pop, epoch, .. }) => {
            assert_eq!((pop.as_str(), epoch), ("pop-a", 1))
        }
        other => panic!("expected HeldElsewhere, got {other:?}"),
    }
    h.commit_snapshot(&req("m/1", 1, 0, 1, &[(0, page(1, 0))]))
        .unwrap();
    h.release("m/1", 1).unwrap();
    h.release("m/1", 1).unwrap(); // idempotent
    let r = h.get_activation("m/1").unwrap().unwrap();
    assert!(!r.active);
    assert!(h.list_activations_by_pop("pop-a").unwrap().is_empty());
    // Inactive: anyone may claim without a takeover.
    let b = h.claim("m/1", "pop-b", 300, &never).unwrap();
    assert_eq!((b.epoch, b.head_seq), (2, 1));
    assert!(matches!(
        h.release("m/1", 1),
        Err(StorageError::Fenced {
            epoch_given: 1,
            epoch_current: 2,
            ..
        })
    ));
    // Re-claim by the same POP bumps the epoch too.
    assert_eq!(h.claim("m/1", "pop-b", 400, &never).unwrap().epoch, 3);
    // Takeover with consent moves the index.
    let seen = std::cell::Cell::new(None);
    let c = h
        .claim("m/1", "pop-c", 500, &|cur| {
            seen.set(Some(cur.epoch));
            true
        })
        .unwrap();
    assert_eq!(seen.get(), Some(3), "may_take_over sees the current record");
    assert_eq!(c.epoch, 4);
    assert!(h.list_activations_by_pop("pop-b").unwrap().is_empty());
    assert_eq!(
        h.list_activations_by_pop("pop-c").unwrap(),
        vec!["m/1".to_string()]
    );
    claim(h, "m/2", "pop-c");
    let all = h.list_activations().unwrap();
    assert_eq!(
        all.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        vec!["m/1", "m/2"]
    );
    assert_eq!(h.list_activations_by_pop("pop-c").unwrap().len(), 2);
    // Names that are prefixes of each other stay apart.
    claim(h, "m", "pop-c");
    assert_eq!(h.get_activation("m").unwrap().unwrap().epoch, 1);
    assert_eq!(h.list_activations_by_pop("pop").unwrap().len(), 0);
}

pub(crate) fn types_and_pops_roundtrip(h: &Harness) {
    let t = TypeRecord {
        digest: "cd".repeat(32),
        config_json: r#"{"durability":"turn"}"#.into(),
        deployed_at_ms: 42,
    };
    h.put_type("player", &t).unwrap();
    h.put_type("match", &t).unwrap();
    assert_eq!(h.get_type("player").unwrap(), Some(t.clone()));
    assert_eq!(h.get_type("nope").unwrap(), None);
    let names: Vec<String> = h
        .list_types()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["match", "player"]);
    h.delete_type("match").unwrap();
    assert_eq!(h.list_types().unwrap().len(), 1);
    let p = PopRecord {
        addr: "http://127.0.0.1:7000".into(),
        coords: (48.85, 2.35),
        lease_until_ms: 1000,
        incarnation: 1,
    };
    h.put_pop("paris", &p).unwrap();
    assert_eq!(h.get_pop("paris").unwrap(), Some(p.clone()));
    let renewed = h
        .update_pop("paris", |cur| {
            let mut cur = cur.expect("present");
            cur.lease_until_ms = 2000;
            Ok((Some(cur), "renewed"))
        })
        .unwrap();
    assert_eq!(renewed, "renewed");
    assert_eq!(h.get_pop("paris").unwrap().unwrap().lease_until_ms, 2000);
    assert_eq!(h.list_pops().unwrap().len(), 1);
    h.remove_pop("paris").unwrap();
    assert_eq!(h.get_pop("paris").unwrap(), None);
}

pub(crate) fn value_over_100kb_split_and_reassembled(h: &Harness) {
    let comp: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let before = h.stats();
    let digest = h.put_component(&comp).unwrap();
    assert_eq!(digest.len(), 64);
    let written = h.stats().since(&before);
    assert!(written.bytes_written >= 300_000);
    assert_eq!(
        h.get_component(&digest).unwrap().as_deref(),
        Some(&comp[..])
    );
    let raw = raw_prefix(h, keys::PREFIX); // everything
    assert!(
        raw.iter().all(|(_, v)| v.len() <= VALUE_BYTES_MAX),
        "every value under 100 kB"
    );
    assert!(raw.len() >= 4, "300 kB is split into several values");
    // Idempotent: the same bytes are not written again.
    let before = h.stats();
    assert_eq!(h.put_component(&comp).unwrap(), digest);
    assert_eq!(h.stats().since(&before).bytes_written, 0);
    assert_eq!(h.get_component(&"00".repeat(32)).unwrap(), None);
    // An empty component works too.
    let d = h.put_component(b"").unwrap();
    assert_eq!(h.get_component(&d).unwrap(), Some(vec![]));
}

pub(crate) fn snapshot_over_10mb_staged_then_small_manifest(h: &Harness) {
    let a = claim(h, "big/1", "pop-a");
    let pages = 12 * 16; // 12 MiB
    let changed: Vec<(u32, Vec<u8>)> = (0..pages).map(|i| (i, page(9, i))).collect();
    let before = h.stats();
    assert_eq!(
        h.commit_snapshot(&req("big/1", a.epoch, 0, pages, &changed))
            .unwrap(),
        1
    );
    let d = h.stats().since(&before);
    assert!(
        d.bytes_written > 12 * 1024 * 1024,
        "all pages written: {d:?}"
    );
    assert!(
        d.transaction_bytes_max <= STAGE_TXN_BYTES_MAX as u64 + 64 * 1024,
        "every transaction stayed near 1 MB, far under 10 MB: {d:?}"
    );
    let stage_txns = (d.bytes_written as usize).div_ceil(STAGE_TXN_BYTES_MAX) as u64;
    assert!(
        (stage_txns + 1..=stage_txns + 3).contains(&d.transactions),
        "staging transactions plus one manifest transaction: {d:?}"
    );
    assert!(
        d.transaction_bytes_last < 16 * 1024,
        "the last (manifest) transaction is small: {d:?}"
    );
    // No stage markers remain after the manifest made the pages visible.
    assert!(
        raw_prefix(h, &keys::snap_prefix("big/1"))
            .iter()
            .all(|(k, _)| !crate::tuple::printable(k).contains("\"s\""))
    );
    let s = h.load_snapshot("big/1").unwrap().unwrap();
    let mut want = Vec::new();
    apply(&mut want, pages, &changed);
    assert!(s.memories[0] == want, "12 MiB image restored byte for byte");
    // The next, small commit is one transaction.
    let before = h.stats();
    h.commit_snapshot(&req("big/1", a.epoch, 1, pages, &[(5, page(10, 5))]))
        .unwrap();
    let d = h.stats().since(&before);
    assert_eq!(d.transactions, 1);
}

pub(crate) fn commit_writes_only_dirty_pages(h: &Harness) {
    let a = claim(h, "dirty/1", "pop-a");
    let pages = 64; // 4 MiB
    let all: Vec<(u32, Vec<u8>)> = (0..pages).map(|i| (i, page(1, i))).collect();
    h.commit_snapshot(&req("dirty/1", a.epoch, 0, pages, &all))
        .unwrap();
    let before = h.stats();
    h.commit_snapshot(&req("dirty/1", a.epoch, 1, pages, &[(17, page(2, 17))]))
        .unwrap();
    let d = h.stats().since(&before);
    let budget = PAGE_SIZE as u64 + 2048;
    assert!(
        d.bytes_written <= budget,
        "a one-page turn on 4 MiB wrote {} bytes, budget {budget} (one page + a small manifest)",
        d.bytes_written
    );
    assert_eq!(d.transactions, 1, "one transaction");
    // A zero page is recorded, not written.
    let before = h.stats();
    h.commit_snapshot(&req(
        "dirty/1",
        a.epoch,
        2,
        pages,
        &[(3, vec![0; PAGE_SIZE])],
    ))
    .unwrap();
    assert!(
        h.stats().since(&before).bytes_written < 2048,
        "a zeroed page costs only manifest bytes"
    );
    // Growth: new pages not listed are zero.
    h.commit_snapshot(&req(
        "dirty/1",
        a.epoch,
        3,
        pages + 2,
        &[(pages, page(3, pages))],
    ))
    .unwrap();
    let mut want = Vec::new();
    apply(&mut want, pages, &all);
    apply(
        &mut want,
        pages,
        &[(17, page(2, 17)), (3, vec![0; PAGE_SIZE])],
    );
    apply(&mut want, pages + 2, &[(pages, page(3, pages))]);
    let s = h.load_snapshot("dirty/1").unwrap().unwrap();
    assert_eq!(s.seq, 4);
    assert!(
        s.memories[0] == want,
        "image = all commits applied in order"
    );
    assert_eq!(s.meta, meta());
}

/// A one-page turn that changed a few hundred bytes of a mostly-zero page
/// (the common case for a guest's stack, data and heap pages) writes a
/// compressed page: far less than the page size.
pub(crate) fn sparse_page_commit_writes_compressed(h: &Harness) {
    let a = claim(h, "sparse/1", "pop-a");
    let pages = 64; // 4 MiB
    let all: Vec<(u32, Vec<u8>)> = (0..pages).map(|i| (i, sparse_page(1, i))).collect();
    let before = h.stats();
    h.commit_snapshot(&req("sparse/1", a.epoch, 0, pages, &all))
        .unwrap();
    let d = h.stats().since(&before);
    assert!(
        d.bytes_written < pages as u64 * PAGE_SIZE as u64 / 20,
        "64 sparse pages (4 MiB) wrote {} bytes, expected under 1/20 of their size",
        d.bytes_written
    );
    let before = h.stats();
    h.commit_snapshot(&req(
        "sparse/1",
        a.epoch,
        1,
        pages,
        &[(17, sparse_page(2, 17))],
    ))
    .unwrap();
    let d = h.stats().since(&before);
    let budget = PAGE_SIZE as u64 / 16;
    assert!(
        d.bytes_written <= budget,
        "a one-page turn of a mostly-zero page wrote {} bytes, budget {budget} (a compressed page + a small manifest)",
        d.bytes_written
    );
    assert_eq!(d.transactions, 1, "one transaction");
    let mut want = Vec::new();
    apply(&mut want, pages, &all);
    apply(&mut want, pages, &[(17, sparse_page(2, 17))]);
    let s = h.load_snapshot("sparse/1").unwrap().unwrap();
    assert_eq!(s.seq, 2);
    assert!(s.memories[0] == want, "image restored byte for byte");
}

/// Pages that lz4 cannot shrink are stored raw and round-trip, next to
/// compressed ones, including a last page cut short by a memory length
/// that is not a multiple of the page size.
pub(crate) fn incompressible_page_roundtrips(h: &Harness) {
    let a = claim(h, "rand/1", "pop-a");
    let changed = vec![
        (0, random_page(1)),
        (1, sparse_page(1, 1)),
        (2, random_page(2)),
        (3, sparse_page(1, 3)),
    ];
    let len_bytes = 3 * PAGE_SIZE as u64 + 1000;
    let req_len = |head: u64, changed: &[(u32, Vec<u8>)]| {
        let mut r = req("rand/1", a.epoch, head, 0, &[]);
        r.memories = vec![MemoryDelta {
            len_bytes,
            changed_pages: changed.to_vec(),
        }];
        r
    };
    let before = h.stats();
    h.commit_snapshot(&req_len(0, &changed)).unwrap();
    let d = h.stats().since(&before);
    assert!(
        d.bytes_written >= 2 * PAGE_SIZE as u64,
        "the two random pages are written whole: {d:?}"
    );
    let values = raw_prefix(h, &keys::page_prefix("rand/1"));
    assert_eq!(values.len(), 4);
    assert_eq!(
        values.iter().filter(|(_, v)| v.len() > PAGE_SIZE).count(),
        2,
        "random pages stored raw"
    );
    let mut want = Vec::new();
    apply(&mut want, 4, &changed);
    want.truncate(len_bytes as usize);
    let s = h.load_snapshot("rand/1").unwrap().unwrap();
    assert!(s.memories[0] == want, "image restored byte for byte");
    // Overwrite a compressed page with a random one and back.
    h.commit_snapshot(&req_len(1, &[(1, random_page(3))]))
        .unwrap();
    h.commit_snapshot(&req_len(2, &[(2, sparse_page(4, 2)), (3, random_page(5))]))
        .unwrap();
    let mut want = Vec::new();
    let changed = [
        (0, random_page(1)),
        (1, random_page(3)),
        (2, sparse_page(4, 2)),
        (3, random_page(5)),
    ];
    apply(&mut want, 4, &changed);
    want.truncate(len_bytes as usize);
    let s = h.load_snapshot("rand/1").unwrap().unwrap();
    assert!(s.memories[0] == want, "image after overwrites");
}

/// Damage inside a compressed page value that the envelope crc cannot
/// see (the test recomputes it after each flip) still never loads as
/// garbage or panics: the decompressor, the exact length check and the
/// crc32 of the uncompressed image turn it into `Corrupt`.
pub(crate) fn corrupt_compressed_page_detected(h: &Harness) {
    let a = claim(h, "cz/1", "pop-a");
    h.commit_snapshot(&req("cz/1", a.epoch, 0, 1, &[(0, sparse_page(7, 0))]))
        .unwrap();
    let want = h.load_snapshot("cz/1").unwrap().unwrap().memories;
    let (key, orig) = raw_prefix(h, &keys::page_prefix("cz/1"))
        .pop()
        .expect("one page value");
    assert!(
        orig.len() < PAGE_SIZE / 8,
        "compressed: {} bytes",
        orig.len()
    );
    let reseal = |mut v: Vec<u8>| {
        let crc = crc32fast::hash(&v[5..]);
        v[1..5].copy_from_slice(&crc.to_le_bytes());
        v
    };
    let put = |v: &[u8]| {
        h.kv()
            .transact(|tx| {
                tx.set(&key, v);
                Ok(())
            })
            .unwrap()
    };
    let (mut detected, mut harmless) = (0, 0);
    for pos in 5..orig.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = orig.clone();
            bad[pos] ^= mask;
            put(&reseal(bad));
            match h.load_snapshot("cz/1") {
                Err(StorageError::Corrupt { key: k, .. }) => {
                    assert!(k.contains("cz/1"), "the error names the key: {k}");
                    detected += 1;
                }
                // A flip of the encoding's sealed flag claims a sealed page
                // this handle has no key for: refused too.
                Err(StorageError::PageKey(_)) => detected += 1,
                // Bytes the image does not depend on (the epoch, padding,
                // a match offset between equal runs of zeros) may change
                // harmlessly; the image must then be exactly right.
                Ok(Some(s)) if s.memories == want => harmless += 1,
                other => panic!("flip {mask:#x} at byte {pos} loaded garbage: {other:?}"),
            }
        }
    }
    assert!(
        detected > 4 * harmless,
        "most flips are detected: {detected} detected, {harmless} harmless"
    );
    // Truncated streams, resealed.
    for len in [6, orig.len() / 2, orig.len() - 1] {
        put(&reseal(orig[..len].to_vec()));
        assert!(matches!(
            h.load_snapshot("cz/1"),
            Err(StorageError::Corrupt { .. })
        ));
    }
    put(&orig);
    assert_eq!(h.load_snapshot("cz/1").unwrap().unwrap().memories, want);
}

/// The alarm due index moves with the commits that set and clear alarms,
/// and a fenced commit adds nothing to it.
pub(crate) fn due_index_commits_with_the_turn(h: &Harness) {
    let a = claim(h, "al/1", "pop-a");
    let mut r = req("al/1", a.epoch, 0, 1, &[]);
    r.due = vec![
        DueChange {
            at_ms: 2_000,
            id: 7,
            set: true,
        },
        DueChange {
            at_ms: 1_000,
            id: 8,
            set: true,
        },
    ];
    h.commit_snapshot(&r).unwrap();
    let due = h.list_due(1_500, 10).unwrap();
    assert_eq!(
        due,
        vec![DueAlarm {
            at_ms: 1_000,
            actor: "al/1".into(),
            id: 8
        }],
        "only what is due before the bound, earliest first"
    );
    assert_eq!(h.list_due(u64::MAX, 10).unwrap().len(), 2);
    assert_eq!(h.list_due(u64::MAX, 1).unwrap().len(), 1, "the limit holds");
    // A zombie's commit (stale epoch) adds nothing.
    let b = h.claim("al/1", "pop-b", 1, &|_| true).unwrap();
    let mut stale = req("al/1", a.epoch, 1, 1, &[]);
    stale.due = vec![DueChange {
        at_ms: 10,
        id: 9,
        set: true,
    }];
    assert!(matches!(
        h.commit_snapshot(&stale),
        Err(StorageError::Fenced { .. })
    ));
    assert_eq!(h.list_due(u64::MAX, 10).unwrap().len(), 2);
    let mut r2 = req("al/1", b.epoch, 1, 1, &[]);
    r2.due = vec![DueChange {
        at_ms: 1_000,
        id: 8,
        set: false,
    }];
    h.commit_snapshot(&r2).unwrap();
    let left = h.list_due(u64::MAX, 10).unwrap();
    assert_eq!(
        left,
        vec![DueAlarm {
            at_ms: 2_000,
            actor: "al/1".into(),
            id: 7
        }]
    );
    h.clear_due(&left[0]).unwrap();
    assert!(h.list_due(u64::MAX, 10).unwrap().is_empty());
}

/// Compiled code has a collector: code a recompile replaces is deleted, and
/// a component keeps the code of at most COMPILED_ENGINES_PER_COMPONENT_MAX
/// engine configurations, the newest put always among them.
pub(crate) fn compiled_code_is_collected(h: &Harness) {
    use crate::store::COMPILED_ENGINES_PER_COMPONENT_MAX as MAX;
    let code = |n: u32| -> Vec<u8> { (0..200_000u32).map(|i| (i ^ n) as u8).collect() };
    let digest_of = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    // A recompile for the same engine replaces the code, and the old code
    // is gone.
    h.put_compiled("d1", "e0", &code(1)).unwrap();
    h.put_compiled("d1", "e0", &code(2)).unwrap();
    assert_eq!(h.get_compiled("d1", "e0").unwrap(), Some(code(2)));
    assert_eq!(h.get_component(&digest_of(&code(1))).unwrap(), None);
    // More engines than the limit: the newest stays, and no more than MAX.
    for e in 1..=MAX + 2 {
        h.put_compiled("d1", &format!("e{e}"), &code(10 + e as u32))
            .unwrap();
        assert_eq!(
            h.get_compiled("d1", &format!("e{e}")).unwrap(),
            Some(code(10 + e as u32))
        );
    }
    let kept: Vec<u32> = (0..=MAX + 2)
        .filter(|e| h.get_compiled("d1", &format!("e{e}")).unwrap().is_some())
        .map(|e| e as u32)
        .collect();
    assert_eq!(kept.len(), MAX, "{kept:?}");
    // The code of every dropped record is deleted too.
    for e in 1..=MAX as u32 + 2 {
        let present = h
            .get_component(&digest_of(&code(10 + e)))
            .unwrap()
            .is_some();
        assert_eq!(present, kept.contains(&e), "engine e{e}");
    }
    // Another component's code is untouched.
    h.put_compiled("d2", "e0", &code(99)).unwrap();
    h.put_compiled("d1", "e9", &code(98)).unwrap();
    assert_eq!(h.get_compiled("d2", "e0").unwrap(), Some(code(99)));
}

/// Events are stored with the commit that publishes them, read back in
/// order after a seq, and trimmed to the newest EVENTS_KEPT_PER_TOPIC.
pub(crate) fn events_commit_in_order_and_are_trimmed(h: &Harness) {
    let a = claim(h, "ev/1", "pop-a");
    let ev = |seq: u64| EventRecord {
        topic: "state".into(),
        seq,
        payload: seq.to_le_bytes().to_vec(),
    };
    let mut head = 0;
    let mut next = 1;
    while next <= EVENTS_KEPT_PER_TOPIC + 10 {
        let mut r = req("ev/1", a.epoch, head, 1, &[]);
        r.events = (next..next + 50).map(ev).collect();
        head = h.commit_snapshot(&r).unwrap();
        next += 50;
    }
    let newest = next - 1;
    assert_eq!(h.last_event_seq("ev/1", "state").unwrap(), newest);
    assert_eq!(h.last_event_seq("ev/1", "other").unwrap(), 0);
    let all = h.read_events("ev/1", "state", 0, usize::MAX).unwrap();
    assert_eq!(
        all.len() as u64,
        EVENTS_KEPT_PER_TOPIC,
        "older events are trimmed"
    );
    assert_eq!(all[0].seq, newest - EVENTS_KEPT_PER_TOPIC + 1);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1), "no gap");
    assert_eq!(all.last().unwrap(), &ev(newest));
    let tail = h.read_events("ev/1", "state", newest - 3, 2).unwrap();
    assert_eq!(tail, vec![ev(newest - 2), ev(newest - 1)]);
    // Oversized or unnamed events are refused with nothing written.
    let mut bad = req("ev/1", a.epoch, head, 1, &[]);
    bad.events = vec![EventRecord {
        topic: "state".into(),
        seq: newest + 1,
        payload: vec![0; EVENT_BYTES_MAX + 1],
    }];
    assert!(matches!(
        h.commit_snapshot(&bad),
        Err(StorageError::InvalidArgument(_))
    ));
    bad.events = vec![EventRecord {
        topic: String::new(),
        seq: newest + 1,
        payload: vec![],
    }];
    assert!(matches!(
        h.commit_snapshot(&bad),
        Err(StorageError::InvalidArgument(_))
    ));
    assert_eq!(h.last_event_seq("ev/1", "state").unwrap(), newest);
}

pub(crate) fn snapshot_roundtrip_multi_memory_and_extras(h: &Harness) {
    assert_eq!(h.load_snapshot("x/1").unwrap(), None, "never claimed");
    assert_eq!(h.load_snapshot_head("x/1").unwrap(), None, "never claimed");
    let a = claim(h, "x/1", "pop-a");
    assert_eq!(
        h.load_snapshot("x/1").unwrap(),
        None,
        "claimed, no snapshot yet"
    );
    assert_eq!(h.load_snapshot_head("x/1").unwrap(), None);
    // The head without pages says what the whole snapshot says.
    let head_matches = |s: &crate::LoadedSnapshot| {
        let head = h.load_snapshot_head("x/1").unwrap().unwrap();
        assert_eq!((head.seq, head.epoch), (s.seq, s.epoch));
        assert_eq!(head.meta, s.meta);
        assert_eq!(head.extra, s.extra);
        let lens: Vec<u64> = s.memories.iter().map(|m| m.len() as u64).collect();
        assert_eq!(head.memory_lens, lens);
    };
    let mut r = req("x/1", a.epoch, 0, 2, &[(1, page(1, 1))]);
    r.memories.push(MemoryDelta {
        len_bytes: 3 * PAGE_SIZE as u64 + 100, // not a multiple of the page size
        changed_pages: vec![(3, page(2, 3)), (0, page(2, 0))],
    });
    r.extra = vec![
        ("idem/k1".into(), b"reply-1".to_vec()),
        ("idem/k2".into(), b"reply-2".to_vec()),
    ];
    h.commit_snapshot(&r).unwrap();
    let s = h.load_snapshot("x/1").unwrap().unwrap();
    assert_eq!(s.memories.len(), 2);
    assert_eq!(s.memories[0].len(), 2 * PAGE_SIZE);
    assert!(s.memories[0][..PAGE_SIZE].iter().all(|&b| b == 0));
    assert_eq!(s.memories[1].len(), 3 * PAGE_SIZE + 100);
    assert_eq!(&s.memories[1][3 * PAGE_SIZE..], &page(2, 3)[..100]);
    assert_eq!(s.extra.len(), 2);
    head_matches(&s);
    // Delete one extra (empty value), replace the other.
    let mut r2 = req("x/1", a.epoch, 1, 2, &[]);
    r2.memories.push(MemoryDelta {
        len_bytes: 3 * PAGE_SIZE as u64 + 100,
        changed_pages: vec![],
    });
    r2.extra = vec![
        ("idem/k1".into(), vec![]),
        ("idem/k2".into(), b"r2".to_vec()),
    ];
    h.commit_snapshot(&r2).unwrap();
    let s2 = h.load_snapshot("x/1").unwrap().unwrap();
    assert_eq!(s2.extra, vec![("idem/k2".to_string(), b"r2".to_vec())]);
    assert_eq!(s2.memories, s.memories);
    head_matches(&s2);
    // Bad requests are refused with InvalidArgument, nothing written.
    let bad = req("x/1", a.epoch, 2, 2, &[(2, page(1, 2))]);
    assert!(matches!(
        h.commit_snapshot(&bad),
        Err(StorageError::InvalidArgument(_))
    ));
    let bad = req("x/1", a.epoch, 2, 2, &[(0, vec![1; 10])]);
    assert!(matches!(
        h.commit_snapshot(&bad),
        Err(StorageError::InvalidArgument(_))
    ));
}

pub(crate) fn commit_batch_fences_each_request_alone(h: &Harness) {
    let e1 = claim(h, "b/1", "pop-a").epoch;
    let e2 = claim(h, "b/2", "pop-a").epoch;
    let e3 = claim(h, "b/3", "pop-a").epoch;
    claim(h, "b/2", "pop-b"); // b/2 is taken over: its request is stale
    let reqs = vec![
        req("b/1", e1, 0, 1, &[(0, page(1, 0))]),
        req("b/2", e2, 0, 1, &[(0, page(2, 0))]),
        req("b/3", e3, 0, 1, &[(0, page(3, 0))]),
        req("b/1", e1, 1, 1, &[(0, page(4, 0))]), // chained on the first
    ];
    let before = h.stats();
    let out = h.commit_batch(&reqs);
    assert_eq!(
        h.stats().since(&before).transactions,
        2,
        "one KV transaction for the three actors, one for the chained request"
    );
    assert_eq!(out[0], Ok(1));
    assert!(
        matches!(out[1], Err(StorageError::Fenced { .. })),
        "{:?}",
        out[1]
    );
    assert_eq!(out[2], Ok(1));
    assert_eq!(out[3], Ok(2));
    assert_eq!(h.load_snapshot("b/2").unwrap(), None);
    assert_eq!(
        &h.load_snapshot("b/1").unwrap().unwrap().memories[0][..],
        &page(4, 0)[..]
    );
    assert_eq!(h.get_activation("b/3").unwrap().unwrap().head_seq, 1);
    // Groups split at about 1 MB; big ones are staged alone.
    let many: Vec<CommitRequest> = (0..3)
        .map(|i| {
            let a = format!("g/{i}");
            let e = claim(h, &a, "pop-a").epoch;
            let ch: Vec<(u32, Vec<u8>)> = (0..10).map(|p| (p, page(i, p))).collect();
            req(&a, e, 0, 10, &ch)
        })
        .collect();
    let out = h.commit_batch(&many);
    assert!(out.iter().all(|r| r == &Ok(1)), "{out:?}");
    assert!(h.stats().transaction_bytes_max < 2 * STAGE_TXN_BYTES_MAX as u64);
}

pub(crate) fn shrinking_memory_leaves_no_pages_beyond_its_length(h: &Harness) {
    let e = claim(h, "shrink/1", "pop-a").epoch;
    let mut r = req(
        "shrink/1",
        e,
        0,
        40,
        &(0..40).map(|i| (i, page(7, i))).collect::<Vec<_>>(),
    );
    r.memories.push(MemoryDelta {
        len_bytes: 4 * PAGE_SIZE as u64,
        changed_pages: (0..4).map(|i| (i, page(8, i))).collect(),
    });
    assert_eq!(h.commit_snapshot(&r), Ok(1));
    assert_eq!(raw_prefix(h, &keys::page_prefix("shrink/1")).len(), 44);
    // Memory 0 shrinks to 2 pages, memory 1 is gone: a constant number of
    // mutations, not one per dropped page.
    let before = h.stats();
    let r = req("shrink/1", e, 1, 2, &[(1, page(9, 1))]);
    assert_eq!(h.commit_snapshot(&r), Ok(2));
    let d = h.stats().since(&before);
    assert!(d.keys_written <= 8, "range clears, not one per page: {d:?}");
    let left = raw_prefix(h, &keys::page_prefix("shrink/1"));
    assert_eq!(
        keys_of(&left),
        vec![
            keys::page("shrink/1", 0, 0, 1),
            keys::page("shrink/1", 0, 1, 2)
        ],
        "only the head's pages remain"
    );
    let s = h.load_snapshot("shrink/1").unwrap().unwrap();
    assert_eq!(s.memories.len(), 1);
    assert_eq!(s.memories[0][..PAGE_SIZE], page(7, 0)[..]);
    assert_eq!(s.memories[0][PAGE_SIZE..], page(9, 1)[..]);
    // Growing again reads zeros where the dropped pages were.
    let r = req("shrink/1", e, 2, 40, &[]);
    assert_eq!(h.commit_snapshot(&r), Ok(3));
    let s = h.load_snapshot("shrink/1").unwrap().unwrap();
    assert!(s.memories[0][2 * PAGE_SIZE..].iter().all(|&b| b == 0));
    assert!(!h.needs_gc("shrink/1").unwrap());
}

pub(crate) fn corrupted_snapshot_detected(h: &Harness) {
    let a = claim(h, "c/1", "pop-a");
    // Pages 0 and 1 are stored raw (incompressible), page 2 compressed.
    h.commit_snapshot(&req(
        "c/1",
        a.epoch,
        0,
        3,
        &[(0, page(1, 0)), (1, page(1, 1)), (2, sparse_page(1, 2))],
    ))
    .unwrap();
    let all = raw_prefix(h, &keys::snap_prefix("c/1"));
    let targets: Vec<(Vec<u8>, Vec<u8>)> = all.clone();
    assert!(targets.len() >= 4, "three pages and a manifest");
    assert!(
        targets.iter().any(|(_, v)| v.len() < PAGE_SIZE / 8),
        "one page value is compressed"
    );
    for (key, orig) in &targets {
        for pos in [0, 1, 5, orig.len() / 2, orig.len() - 1] {
            let mut bad = orig.clone();
            bad[pos] ^= 0x40;
            h.kv()
                .transact(|tx| {
                    tx.set(key, &bad);
                    Ok(())
                })
                .unwrap();
            match h.load_snapshot("c/1") {
                Err(StorageError::Corrupt { key: k, reason }) => {
                    assert!(!reason.is_empty());
                    assert!(k.contains("c/1"), "the error names the key: {k}");
                }
                other => panic!(
                    "flipped byte {pos} of {} undetected: {other:?}",
                    crate::tuple::printable(key)
                ),
            }
        }
        // Truncated and missing values too.
        h.kv()
            .transact(|tx| {
                tx.set(key, &orig[..orig.len() / 3]);
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            h.load_snapshot("c/1"),
            Err(StorageError::Corrupt { .. })
        ));
        h.kv()
            .transact(|tx| {
                tx.clear(key);
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            h.load_snapshot("c/1"),
            Err(StorageError::Corrupt { .. })
        ));
        h.kv()
            .transact(|tx| {
                tx.set(key, orig);
                Ok(())
            })
            .unwrap();
        assert!(
            h.load_snapshot("c/1").unwrap().is_some(),
            "restored value loads again"
        );
    }
    // Corrupt records elsewhere are errors, not panics.
    let ak = keys::act("c/1");
    let orig = h.kv().read(|tx| tx.get(&ak)).unwrap().unwrap();
    let mut bad = orig.clone();
    bad[orig.len() / 2] ^= 1;
    h.kv()
        .transact(|tx| {
            tx.set(&ak, &bad);
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        h.get_activation("c/1"),
        Err(StorageError::Corrupt { .. })
    ));
    // A component whose chunk was altered fails its digest.
    let d = h.put_component(&[7u8; 1000]).unwrap();
    let chunk = raw_prefix(h, keys::PREFIX)
        .into_iter()
        .find(|(k, _)| crate::tuple::printable(k).contains("\"c\", 0"))
        .unwrap();
    let mut v = chunk.1.clone();
    v[10] ^= 1;
    h.kv()
        .transact(|tx| {
            tx.set(&chunk.0, &v);
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        h.get_component(&d),
        Err(StorageError::Corrupt { .. })
    ));
}

fn count_pages(h: &Harness, actor: &str) -> usize {
    raw_prefix(h, &keys::page_prefix(actor)).len()
}

pub(crate) fn gc_removes_unreferenced_pages_and_orphaned_stages(h: &Harness) {
    let a = claim(h, "gc/1", "pop-a");
    let four: Vec<(u32, Vec<u8>)> = (0..4).map(|i| (i, page(1, i))).collect();
    h.commit_snapshot(&req("gc/1", a.epoch, 0, 4, &four))
        .unwrap();
    h.commit_snapshot(&req("gc/1", a.epoch, 1, 4, &[(1, page(2, 1))]))
        .unwrap();
    let raw_before = raw_prefix(h, &keys::snap_prefix("gc/1"));
    h.commit_snapshot(&req(
        "gc/1",
        a.epoch,
        2,
        4,
        &[(2, page(3, 2)), (3, vec![0; PAGE_SIZE])],
    ))
    .unwrap();
    assert_eq!(
        count_pages(h, "gc/1"),
        3,
        "commits drop the page versions they supersede (page 3 is zero)"
    );
    let manifests = raw_prefix(h, &keys::snap_prefix("gc/1"))
        .iter()
        .filter(|(k, _)| crate::tuple::printable(k).contains("\"m\""))
        .count();
    assert_eq!(manifests, 1, "only the head manifest is kept");
    let before = h.load_snapshot("gc/1").unwrap();
    assert!(
        !h.needs_gc("gc/1").unwrap(),
        "commits left nothing to collect"
    );
    let st = h.gc_snapshots("gc/1").unwrap();
    assert_eq!((st.manifests_deleted, st.pages_deleted), (0, 0), "{st:?}");
    assert_eq!(
        h.load_snapshot("gc/1").unwrap(),
        before,
        "gc changes nothing visible"
    );

    // Leftovers of an older layout (or of a bug): an old manifest and the
    // superseded pages it references. gc sweeps them.
    h.kv()
        .transact(|tx| {
            for (k, v) in &raw_before {
                if tx.get(k)?.is_none() {
                    tx.set(k, v);
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(count_pages(h, "gc/1"), 5);
    assert!(
        h.needs_gc("gc/1").unwrap(),
        "an old manifest needs collecting"
    );
    let st = h.gc_snapshots("gc/1").unwrap();
    assert_eq!((st.manifests_deleted, st.pages_deleted), (1, 2), "{st:?}");
    assert_eq!(count_pages(h, "gc/1"), 3);
    assert_eq!(h.load_snapshot("gc/1").unwrap(), before);

    // An abandoned staged commit (the POP died before its manifest).
    let big: Vec<(u32, Vec<u8>)> = (0..20).map(|i| (i, page(4, i))).collect();
    h.stage_without_manifest(&req("gc/1", a.epoch, 3, 20, &big))
        .unwrap();
    assert_eq!(count_pages(h, "gc/1"), 23);
    assert!(h.needs_gc("gc/1").unwrap(), "a stage is left behind");
    // Still the current epoch: it may be in flight, so gc keeps it.
    let st = h.gc_snapshots("gc/1").unwrap();
    assert_eq!(
        (st.pages_deleted, st.stages_deleted),
        (0, 0),
        "in-flight stage kept: {st:?}"
    );
    // Another POP takes over: the stage is orphaned. Before gc runs, the
    // new owner stages the very same keys (same seq): gc must drop the old
    // markers but keep the pages the new owner wrote.
    let b = claim(h, "gc/1", "pop-b");
    h.stage_without_manifest(&req("gc/1", b.epoch, 3, 20, &big))
        .unwrap();
    let st = h.gc_snapshots("gc/1").unwrap();
    assert_eq!(
        st.pages_deleted, 0,
        "re-staged pages of the live owner kept: {st:?}"
    );
    assert!(st.stages_deleted >= 1, "the old epoch's markers go: {st:?}");
    assert_eq!(count_pages(h, "gc/1"), 23);
    // The owner releases without committing: its stage is orphaned now.
    h.release("gc/1", b.epoch).unwrap();
    let st = h.gc_snapshots("gc/1").unwrap();
    assert_eq!(st.pages_deleted, 20, "{st:?}");
    assert!(st.stages_deleted >= 1);
    assert_eq!(count_pages(h, "gc/1"), 3);
    assert_eq!(
        h.load_snapshot("gc/1").unwrap().unwrap().memories,
        before.unwrap().memories
    );

    // An abandoned stage at the seq a later commit reuses: the reused keys
    // survive, the rest go.
    let c = claim(h, "gc/1", "pop-c");
    h.stage_without_manifest(&req("gc/1", c.epoch, 3, 20, &big))
        .unwrap();
    h.commit_snapshot(&req("gc/1", c.epoch, 3, 20, &[(0, page(5, 0))]))
        .unwrap();
    let st = h.gc_snapshots("gc/1").unwrap();
    assert!(st.stages_deleted >= 1, "{st:?}");
    let s = h.load_snapshot("gc/1").unwrap().unwrap();
    assert_eq!(&s.memories[0][..PAGE_SIZE], &page(5, 0)[..]);
    assert_eq!(count_pages(h, "gc/1"), 3, "pages 0 (new), 1, 2");
    assert!(
        raw_prefix(h, &keys::snap_prefix("gc/1"))
            .iter()
            .all(|(k, _)| !crate::tuple::printable(k).contains("\"s\""))
    );
    assert_eq!(
        h.gc_snapshots("nobody").unwrap(),
        GcStats {
            transactions: 1,
            ..GcStats::default()
        }
    );
}

/// Two write transactions that conflict: the one that read a key another
/// changed after it started fails with `not_committed` and applies nothing
/// (memory, FoundationDB); sqlite serializes writers instead, so the
/// second one waits for the first and reads its write. Disjoint keys never
/// conflict.
pub(crate) fn two_transactions_conflict(h: &Harness) {
    let kv = h.kv();
    let read = |key: &str| kv.read(|tx| tx.get(&k(key))).unwrap();
    kv.transact(|tx| {
        tx.set(&k("c"), b"0");
        Ok(())
    })
    .unwrap();
    if kv.backend_name() == "sqlite" {
        let mut t1 = kv.begin().unwrap();
        assert_eq!(t1.get(&k("c")).unwrap().as_deref(), Some(&b"0"[..]));
        let (sent, got) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let kv2 = kv.clone();
            s.spawn(move || {
                // Waits for t1's write lock, then sees t1's commit.
                let mut t2 = kv2.begin().expect("begin after the first writer");
                let seen = t2.get(&k("c")).expect("read");
                t2.set(&k("c"), b"2");
                t2.commit().expect("commit");
                sent.send(seen).expect("send");
            });
            t1.set(&k("c"), b"1");
            t1.commit().unwrap();
            let seen = got
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the second writer finished");
            assert_eq!(seen.as_deref(), Some(&b"1"[..]), "serial order");
        });
        assert_eq!(read("c").as_deref(), Some(&b"2"[..]));
        return;
    }
    let mut t1 = kv.begin().unwrap();
    let mut t2 = kv.begin().unwrap();
    assert_eq!(t1.get(&k("c")).unwrap().as_deref(), Some(&b"0"[..]));
    t2.set(&k("c"), b"2");
    t2.commit().unwrap();
    t1.set(&k("c"), b"1");
    t1.set(&k("side"), b"x");
    assert_eq!(t1.commit(), Err(StorageError::NotCommitted));
    assert_eq!(read("c").as_deref(), Some(&b"2"[..]));
    assert_eq!(read("side"), None, "nothing of the failed commit applied");
    // Disjoint keys: both commit.
    let mut t3 = kv.begin().unwrap();
    let mut t4 = kv.begin().unwrap();
    t3.get(&k("a")).unwrap();
    t3.set(&k("a"), b"3");
    t4.get(&k("b")).unwrap();
    t4.set(&k("b"), b"4");
    t3.commit().unwrap();
    t4.commit().unwrap();
    assert_eq!(read("a").as_deref(), Some(&b"3"[..]));
    assert_eq!(read("b").as_deref(), Some(&b"4"[..]));
}

/// A claim racing a stream of snapshot commits by the previous holder:
/// every commit that succeeded landed before the claim (the head counts
/// exactly them), every one after it is fenced, and the snapshot is the
/// last one acknowledged.
pub(crate) fn claim_races_fence(h: &Harness) {
    const COMMITS_MAX: u64 = 400;
    let a = claim(h, "race/1", "pop-a");
    // The committer says when its third commit landed; the claim races
    // the commits after it.
    let (landed, third) = std::sync::mpsc::channel();
    let (acked, new_epoch) = std::thread::scope(|s| {
        let committer = s.spawn(move || {
            let mut acked = 0u64;
            for head in 0..COMMITS_MAX {
                match h.commit_snapshot(&req("race/1", a.epoch, head, 1, &[(0, page(head + 1, 0))]))
                {
                    Ok(seq) => {
                        assert_eq!(seq, head + 1);
                        acked = seq;
                        if seq == 3 {
                            let _ = landed.send(());
                        }
                    }
                    Err(StorageError::Fenced { .. }) => break,
                    Err(e) => panic!("commit {head}: {e}"),
                }
            }
            acked
        });
        // Let some commits land first (bounded: a committer that failed
        // has dropped its sender), then take the actor over.
        third
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the committer's third commit landed");
        let b = claim(h, "race/1", "pop-b");
        (committer.join().expect("committer"), b.epoch)
    });
    assert!((3..COMMITS_MAX).contains(&acked), "{acked}");
    let act = h.get_activation("race/1").unwrap().unwrap();
    assert_eq!(act.epoch, new_epoch);
    assert_eq!(
        act.head_seq, acked,
        "the head counts exactly the acknowledged commits"
    );
    let s = h.load_snapshot("race/1").unwrap().unwrap();
    assert_eq!(s.seq, acked);
    assert_eq!(s.epoch, a.epoch);
    assert_eq!(&s.memories[0][..], &page(acked, 0)[..]);
    // The old holder stays fenced.
    assert!(matches!(
        h.commit_snapshot(&req("race/1", a.epoch, acked, 1, &[(0, page(9, 0))])),
        Err(StorageError::Fenced { .. })
    ));
}

/// A key of exactly the maximum length and a value of exactly the maximum
/// size, the backend's own key prefix counted, are stored and read back;
/// one byte more is refused by the crate with `LimitExceeded`, never by
/// the backend.
pub(crate) fn max_key_and_value_sizes(h: &Harness) {
    use crate::kv::KEY_BYTES_MAX;
    let kv = h.kv();
    let mut key = k("max");
    key.resize(KEY_BYTES_MAX - kv.key_prefix_len(), b'k');
    let value: Vec<u8> = (0..VALUE_BYTES_MAX).map(|i| (i % 251) as u8).collect();
    kv.transact(|tx| {
        tx.set(&key, &value);
        Ok(())
    })
    .unwrap();
    assert_eq!(kv.read(|tx| tx.get(&key)).unwrap(), Some(value.clone()));
    let got = kv.read(|tx| tx.get_prefix(&k("max"))).unwrap();
    assert_eq!(got, vec![(key.clone(), value.clone())]);
    let mut longer = key.clone();
    longer.push(b'k');
    let r = kv.transact(|tx| {
        tx.set(&longer, b"v");
        Ok(())
    });
    assert_eq!(
        r,
        Err(StorageError::LimitExceeded {
            what: "key",
            bytes: KEY_BYTES_MAX as u64 + 1,
            limit: KEY_BYTES_MAX as u64,
        })
    );
    let mut bigger = value.clone();
    bigger.push(0);
    let r = kv.transact(|tx| {
        tx.set(&key, &bigger);
        Ok(())
    });
    assert!(
        matches!(r, Err(StorageError::LimitExceeded { what: "value", .. })),
        "{r:?}"
    );
    assert_eq!(kv.read(|tx| tx.get(&key)).unwrap(), Some(value));
}

/// Commits whose result came back unknown, although they were applied, are
/// applied once: a snapshot commit, a group commit, a claim and a release
/// (each detects its own earlier commit when retried). On FoundationDB,
/// run with `TERN_FDB_CLIENT_BUGGIFY=1` to have the client inject unknown
/// results of its own as well.
pub(crate) fn unknown_result_is_idempotent(h: &Harness) {
    let (faulty, faults) = crate::kv::faulty::FaultyKv::new(h.kv().backend());
    let store = Store::from_kv(Kv::new(Arc::new(faulty)), None);
    let a = claim(&store, "unk/1", "pop-a");
    let b = claim(&store, "unk/2", "pop-a");
    for head in 0..20u64 {
        faults.fail_next_commits(Fault::CommitUnknownResult, 1);
        let seq = store
            .commit_snapshot(&req(
                "unk/1",
                a.epoch,
                head,
                2,
                &[(head as u32 % 2, page(head + 1, 0))],
            ))
            .unwrap();
        assert_eq!(seq, head + 1, "applied once");
        faults.fail_next_commits(Fault::CommitUnknownResult, 1);
        let out = store.commit_batch(&[req("unk/2", b.epoch, head, 1, &[(0, page(head + 7, 0))])]);
        assert_eq!(out, vec![Ok(head + 1)]);
    }
    assert_eq!(store.get_activation("unk/1").unwrap().unwrap().head_seq, 20);
    assert_eq!(store.get_activation("unk/2").unwrap().unwrap().head_seq, 20);
    assert_eq!(
        &store.load_snapshot("unk/2").unwrap().unwrap().memories[0][..],
        &page(26, 0)[..]
    );
    // A claim whose result was unknown takes one epoch, not two.
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    let c = claim(&store, "unk/1", "pop-b");
    assert_eq!(c.epoch, a.epoch + 1);
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    store.release("unk/1", c.epoch).unwrap();
    assert!(!store.get_activation("unk/1").unwrap().unwrap().active);
    assert_eq!(faults.pending(), 0, "every fault was used");
    #[cfg(feature = "fdb")]
    if h.kv().backend_name() == "fdb" {
        let buggify = std::env::var(crate::kv::fdb::BUGGIFY_ENV).is_ok_and(|v| v == "1");
        if !buggify {
            skip_notice(&format!(
                "conformance::fdb::unknown_result_is_idempotent ran without client buggify; set {}=1 to let FoundationDB inject its own unknown results",
                crate::kv::fdb::BUGGIFY_ENV
            ));
        }
        // Under buggify, the cluster's own faults: a long run of commits,
        // each acknowledged once, the head counting them exactly.
        let d = claim(&store, "unk/3", "pop-a");
        for head in 0..200u64 {
            let seq = store
                .commit_snapshot(&req("unk/3", d.epoch, head, 1, &[(0, page(head + 1, 0))]))
                .unwrap();
            assert_eq!(seq, head + 1);
        }
        assert_eq!(
            store.get_activation("unk/3").unwrap().unwrap().head_seq,
            200
        );
    }
}

/// A store that cannot be reached fails when it is opened, with a message
/// that names it, instead of at the first request: a sqlite file whose
/// directory cannot be created, a FoundationDB cluster whose coordinator
/// does not answer. (An in-process store is always reachable.)
pub(crate) fn unreachable_store_fails_fast(h: &Harness) {
    match h.kv().backend_name() {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("file");
            std::fs::write(&file, b"not a directory").unwrap();
            let url = format!("sqlite:{}", file.join("db/tern.db").display());
            match Store::open(&url) {
                Err(e) => assert!(e.to_string().contains("file"), "names the path: {e}"),
                Ok(_) => panic!("opened a store under a regular file"),
            }
        }
        #[cfg(feature = "fdb")]
        "fdb" => {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let cluster = dir.path().join("fdb.cluster");
            std::fs::write(&cluster, format!("tern:unreachable@127.0.0.1:{port}\n")).unwrap();
            match crate::kv::fdb::FdbBackend::open(&cluster) {
                Err(StorageError::Unavailable { detail }) => {
                    assert!(
                        detail.contains("fdb.cluster"),
                        "names the cluster file: {detail}"
                    )
                }
                Err(e) => panic!("expected Unavailable, got {e}"),
                Ok(_) => panic!("opened an unreachable cluster"),
            }
        }
        other => skip_notice(&format!(
            "conformance::{other}::unreachable_store_fails_fast: an in-process store cannot be unreachable"
        )),
    }
}

/// A transaction that outlives FoundationDB's 5 s limit gets
/// `transaction_too_old` (retryable) from its next read, on every backend:
/// never a timeout that blames the network. (This case waits the 5 s out.)
pub(crate) fn read_after_age_limit_is_too_old(h: &Harness) {
    let kv = h.kv();
    let mut tx = kv.begin().unwrap();
    tx.get(&k("x")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(
        crate::kv::TRANSACTION_DURATION_MS_MAX + 200,
    ));
    match tx.get(&k("x")) {
        Err(e @ StorageError::TransactionTooOld { .. }) => assert!(e.is_retryable()),
        other => panic!("expected transaction_too_old, got {other:?}"),
    }
    drop(tx);
    // A fresh transaction works at once.
    kv.transact(|tx| {
        tx.set(&k("x"), b"1");
        Ok(())
    })
    .unwrap();
}

/// Instantiates the suite for one backend: `$open` is an expression of type
/// `Option<Harness>` (`None` skips the test, after the opener printed why);
/// inside it, `test` is the case's name.
macro_rules! conformance_suite {
    ($backend:ident, |$test:ident| $open:expr) => {
        mod $backend {
            fn run(name: &str, case: fn(&super::Harness)) {
                let $test = name;
                let harness: Option<super::Harness> = $open;
                if let Some(h) = harness {
                    case(&h);
                }
            }
            #[test]
            fn range_reads_ordered_reverse_limited() {
                run(
                    "range_reads_ordered_reverse_limited",
                    super::range_reads_ordered_reverse_limited,
                );
            }
            #[test]
            fn read_your_writes() {
                run("read_your_writes", super::read_your_writes);
            }
            #[test]
            fn conflicting_read_modify_write_no_lost_update() {
                run(
                    "conflicting_read_modify_write_no_lost_update",
                    super::conflicting_read_modify_write_no_lost_update,
                );
            }
            #[test]
            fn limits_enforced() {
                run("limits_enforced", super::limits_enforced);
            }
            #[test]
            fn stale_epoch_commit_refused() {
                run(
                    "stale_epoch_commit_refused",
                    super::stale_epoch_commit_refused,
                );
            }
            #[test]
            fn claim_release_epochs() {
                run("claim_release_epochs", super::claim_release_epochs);
            }
            #[test]
            fn types_and_pops_roundtrip() {
                run("types_and_pops_roundtrip", super::types_and_pops_roundtrip);
            }
            #[test]
            fn value_over_100kb_split_and_reassembled() {
                run(
                    "value_over_100kb_split_and_reassembled",
                    super::value_over_100kb_split_and_reassembled,
                );
            }
            #[test]
            fn snapshot_over_10mb_staged_then_small_manifest() {
                run(
                    "snapshot_over_10mb_staged_then_small_manifest",
                    super::snapshot_over_10mb_staged_then_small_manifest,
                );
            }
            #[test]
            fn commit_writes_only_dirty_pages() {
                run(
                    "commit_writes_only_dirty_pages",
                    super::commit_writes_only_dirty_pages,
                );
            }
            #[test]
            fn sparse_page_commit_writes_compressed() {
                run(
                    "sparse_page_commit_writes_compressed",
                    super::sparse_page_commit_writes_compressed,
                );
            }
            #[test]
            fn incompressible_page_roundtrips() {
                run(
                    "incompressible_page_roundtrips",
                    super::incompressible_page_roundtrips,
                );
            }
            #[test]
            fn corrupt_compressed_page_detected() {
                run(
                    "corrupt_compressed_page_detected",
                    super::corrupt_compressed_page_detected,
                );
            }
            #[test]
            fn due_index_commits_with_the_turn() {
                run(
                    "due_index_commits_with_the_turn",
                    super::due_index_commits_with_the_turn,
                );
            }
            #[test]
            fn compiled_code_is_collected() {
                run(
                    "compiled_code_is_collected",
                    super::compiled_code_is_collected,
                );
            }
            #[test]
            fn events_commit_in_order_and_are_trimmed() {
                run(
                    "events_commit_in_order_and_are_trimmed",
                    super::events_commit_in_order_and_are_trimmed,
                );
            }
            #[test]
            fn snapshot_roundtrip_multi_memory_and_extras() {
                run(
                    "snapshot_roundtrip_multi_memory_and_extras",
                    super::snapshot_roundtrip_multi_memory_and_extras,
                );
            }
            #[test]
            fn commit_batch_fences_each_request_alone() {
                run(
                    "commit_batch_fences_each_request_alone",
                    super::commit_batch_fences_each_request_alone,
                );
            }
            #[test]
            fn shrinking_memory_leaves_no_pages_beyond_its_length() {
                run(
                    "shrinking_memory_leaves_no_pages_beyond_its_length",
                    super::shrinking_memory_leaves_no_pages_beyond_its_length,
                );
            }
            #[test]
            fn corrupted_snapshot_detected() {
                run(
                    "corrupted_snapshot_detected",
                    super::corrupted_snapshot_detected,
                );
            }
            #[test]
            fn two_transactions_conflict() {
                run(
                    "two_transactions_conflict",
                    super::two_transactions_conflict,
                );
            }
            #[test]
            fn claim_races_fence() {
                run("claim_races_fence", super::claim_races_fence);
            }
            #[test]
            fn max_key_and_value_sizes() {
                run("max_key_and_value_sizes", super::max_key_and_value_sizes);
            }
            #[test]
            fn unknown_result_is_idempotent() {
                run(
                    "unknown_result_is_idempotent",
                    super::unknown_result_is_idempotent,
                );
            }
            #[test]
            fn unreachable_store_fails_fast() {
                run(
                    "unreachable_store_fails_fast",
                    super::unreachable_store_fails_fast,
                );
            }
            #[test]
            fn read_after_age_limit_is_too_old() {
                run(
                    "read_after_age_limit_is_too_old",
                    super::read_after_age_limit_is_too_old,
                );
            }
            #[test]
            fn gc_removes_unreferenced_pages_and_orphaned_stages() {
                run(
                    "gc_removes_unreferenced_pages_and_orphaned_stages",
                    super::gc_removes_unreferenced_pages_and_orphaned_stages,
                );
            }
        }
    };
}

conformance_suite!(memory, |_test| Some(super::memory()));
conformance_suite!(sqlite, |_test| Some(super::sqlite()));
#[cfg(feature = "fdb")]
conformance_suite!(fdb, |test| super::fdb(test));

#[cfg(not(feature = "fdb"))]
mod fdb {
    /// The suite runs against FoundationDB only in builds with the `fdb`
    /// feature and `FDB_CLUSTER_FILE` set. This test says so visibly.
    #[test]
    fn skipped_reason() {
        let cluster = std::env::var("FDB_CLUSTER_FILE").ok();
        super::skip_notice(&format!(
            "conformance::fdb skipped: built without the fdb feature (FDB_CLUSTER_FILE={}); run `cargo test -p tern-storage --features fdb -- conformance::fdb` on a machine with libfdb_c and a cluster",
            cluster.as_deref().unwrap_or("<unset>")
        ));
    }
}
