//! # tern-storage
//!
//! Durable state for tern: an ordered, transactional key-value layer with
//! FoundationDB semantics ([`kv`]), its backends, and the record layer
//! ([`Store`]) that the runtime and the directory use.
//!
//! ## What this crate owns
//! - The [`kv::KvBackend`] trait and its backends: `memory` (in-process,
//!   multi-version, optimistic conflicts, fault injection), `sqlite` (the
//!   embedded default, one file shared by the processes of a host), and
//!   `fdb` (FoundationDB, `Store::open("fdb:CLUSTER_FILE")`, behind the
//!   cargo feature `fdb`; see `docs/foundationdb.md`).
//! - FoundationDB's limits, enforced in every backend: keys up to 10 kB,
//!   values up to 100 kB, transactions up to 10 MB of mutations, 5 s.
//! - The key layout (see [`keys`]) and the stored formats: rkyv archives in
//!   a versioned envelope with a crc32, validated with bytecheck on every
//!   load. Snapshot page images are lz4-compressed (stored raw when that
//!   does not shrink them) and carry a second crc32 over the uncompressed
//!   image, checked with the exact page length after decompression.
//! - The records: activations with epochs, POP membership, components,
//!   actor types, incremental snapshots, and their garbage collection.
//!
//! ## Record sets and what bounds them
//! Every set of records either has a bound and a collector here, or says
//! who owns its lifetime:
//! - `snap/<actor>/p`, `snap/<actor>/m` (pages, manifests): only the head
//!   version is kept; a commit clears what it supersedes in the same
//!   transaction (pages beyond a shrunken memory, and memories that are
//!   gone, by range clears); [`Store::gc_snapshots`] sweeps the rest.
//! - `snap/<actor>/s` (stage markers) and the pages of abandoned staged
//!   commits: at most one unfinished staged commit per crash;
//!   [`Store::gc_snapshots`] removes them (the runtime runs it when
//!   [`Store::needs_gc`] says so, on eviction).
//! - `snap/<actor>/x` (`extra` side records): at most [`EXTRA_BYTES_MAX`]
//!   each and [`GROUP_TXN_BYTES_MAX`] per commit; how many an actor keeps
//!   is the caller's policy (the runtime's idempotency table keeps a
//!   bounded number and deletes the rest with empty values). This crate
//!   does not count them.
//! - `due/<at_ms>/<actor>/<id>` (alarm due index): written and removed in
//!   the same commit as the alarm's `extra` record, so it holds one entry
//!   per pending alarm; the runtime bounds alarms per actor.
//!   [`Store::clear_due`] removes an entry whose actor cannot be woken.
//! - `ev/<actor>/<topic>/<seq>` (published events): each commit keeps the
//!   newest [`EVENTS_KEPT_PER_TOPIC`] of a topic and clears older ones in
//!   the same transaction; the runtime bounds topics per actor.
//! - `act_by_pop/<pop>/<actor>`: exactly one entry per active claim; the
//!   claim that moves an actor and the release remove it in the same
//!   transaction, so no entry outlives its claim.
//! - `act/<actor>`: one per actor ever claimed, never deleted: it carries
//!   the epoch counter of the fence (see [`Store::release`]).
//! - `mig/<at_ms>/<token>` (migration log): kept by count and age
//!   ([`MIGRATIONS_KEPT_MAX`], [`MIGRATION_AGE_MS_MAX`]), trimmed on append
//!   and by [`Store::trim_migrations`].
//! - `pop/<pop>`, `type/<name>`: one per name, replaced in place;
//!   [`Store::remove_pop`] and [`Store::delete_type`] remove them.
//! - `comp/<digest>` (components): content-addressed, one per distinct
//!   deployed build, and not collected here: a snapshot may still be bound
//!   to an old build (actors stay on the version that persisted them), and
//!   only the deployer knows when none is. Collecting them is the
//!   deployer's job, once no type and no actor's head refers to a digest.
//!
//! ## What it must not know
//! Nothing about wasm, wasmtime, gRPC, protobuf, or the runtime's config:
//! memories are byte pages, globals are `u64` bits, a type's config is
//! opaque JSON, a component is opaque bytes. The API is synchronous; the
//! runtime calls it from blocking threads.
//!
//! ## Invariants this crate guarantees
//! 1. **Fencing** (design invariant 1): a snapshot commit is one
//!    transaction that reads `act/<actor>` and commits only if the caller's
//!    epoch is the current, active claim and the head is the one it
//!    expected. A stale epoch gets [`StorageError::Fenced`], whatever the
//!    timing; staging transactions are fenced the same way, so a zombie
//!    cannot even stage.
//! 2. **Atomic, durable commits**: a snapshot becomes visible only through
//!    its manifest, written in one transaction with the head bump.
//! 3. **Exactly once**: a commit re-run after `commit_unknown_result`
//!    recognises its own token and does not apply twice.
//! 4. **Incremental** (design invariant 7): a commit writes the changed,
//!    non-zero pages (compressed), a manifest of 8 bytes per page, and a
//!    clear for each page version it supersedes (only the head version is
//!    kept); nothing else. Commits over [`STAGE_TXN_BYTES_MAX`] of pages are staged in
//!    fenced transactions of about 1 MB, then made visible by one small
//!    manifest transaction; [`Store::gc_snapshots`] removes abandoned stages.
//! 7. **sqlite**: WAL, `synchronous=NORMAL` (a commit survives `kill -9` of
//!    the process; a power loss may drop the last few), `BEGIN IMMEDIATE`
//!    for writers, so concurrent writers from several processes wait for
//!    each other instead of conflicting.
//! 5. **Never trusted**: every loaded value is checked (crc32, bytecheck,
//!    sha256 for components); damage is [`StorageError::Corrupt`] naming
//!    the key, never a panic or silent garbage.
//! 6. **Everything has a limit**: retries (`retries_max`), value, key and
//!    transaction sizes, staging and GC batch sizes are named constants.
//!    Every commit transaction (a group commit, a small commit, the manifest
//!    transaction of a staged one) is bounded before it runs by
//!    [`GROUP_TXN_BYTES_MAX`], counting every record it writes (pages,
//!    manifest, `extra` records, clears, activation record); a request
//!    that cannot fit is refused alone.

// The only unsafe code is in the `fdb` backend (booting FoundationDB's
// network thread once per process); without that feature none is allowed.
#![cfg_attr(not(feature = "fdb"), forbid(unsafe_code))]
#![cfg_attr(feature = "fdb", deny(unsafe_code))]
#![warn(missing_docs)]

mod codec;
mod error;
pub mod keys;
pub mod kv;
mod migrations;
pub mod patch;
mod store;
pub mod tuple;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

pub use codec::PageKey;
pub use error::StorageError;
pub use kv::faulty::{Fault, FaultInjector, FaultyKv};
pub use kv::{Kv, Stats, Transaction};
pub use migrations::{
    MIGRATION_AGE_MS_MAX, MIGRATION_TRIM_BATCH_MAX, MIGRATION_TRIM_EVERY, MIGRATIONS_KEPT_MAX,
    MIGRATIONS_LIST_MAX, MigrationRecord,
};
pub use store::{
    ActivationRecord, ClaimFacts, CommitRequest, DUE_CHANGES_PER_COMMIT_MAX, DueAlarm, DueChange,
    EVENT_BYTES_MAX, EVENTS_KEPT_PER_TOPIC, EVENTS_PER_COMMIT_MAX, EXTRA_BYTES_MAX,
    EXTRA_NAME_BYTES_MAX, EXTRA_RECORDS_PER_COMMIT_MAX, EventRecord, GC_MANIFESTS_PER_TXN_MAX,
    GC_PAGE_CLEARS_PER_TXN_MAX, GC_STAGES_PER_TXN_MAX, GROUP_TXN_BYTES_MAX, GcStats,
    LoadedSnapshot, MemoryDelta, OUTBOX_LIST_MAX, PAGE_SIZE, POP_NAME_BYTES_MAX,
    PRE_UPGRADE_BYTES_MAX, PopRecord, PreUpgrade, STAGE_TXN_BYTES_MAX,
    SUPERSEDED_CLEARS_INLINE_MAX, SnapshotHead, SnapshotMeta, Store, TOKENS_MAX, TOPIC_BYTES_MAX,
    TokenRecord, TypeRecord, UPGRADE_FAILURES_MAX, UpgradeFailure, VALUE_CHUNK_BYTES, VERSIONS_MAX,
    VersionRecord,
};

/// A random-enough u64 for commit tokens (not for cryptography): std's
/// per-process random SipHash keys over a counter, the time and the pid.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// Planted bugs, for proving that the simulator's checker catches them.
/// Compiled in only with the `plant` feature, which only `tern-sim` turns
/// on; without it every switch is a constant `false`.
pub mod plant {
    #[cfg(feature = "plant")]
    static SKIP_FENCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Whether the store accepts a stale epoch's commit, whatever its
    /// expected head (the planted bug `skip-fence`).
    #[inline]
    pub fn skip_fence() -> bool {
        #[cfg(feature = "plant")]
        {
            SKIP_FENCE.load(std::sync::atomic::Ordering::Relaxed)
        }
        #[cfg(not(feature = "plant"))]
        {
            false
        }
    }

    /// Switches the planted bug `skip-fence` on or off.
    #[cfg(feature = "plant")]
    pub fn set_skip_fence(on: bool) {
        SKIP_FENCE.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}
