//! The record layer: activations, POPs, components, actor types and
//! snapshots, written once over the [`Kv`] trait. The runtime and the
//! directory use only this API, never raw keys.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{
    FORMAT_V3, PageBinding, decode, decode_as, encode, encode_as, pack_page, unpack_page,
    with_archived,
};
use crate::keys;
use crate::kv::faulty::{FaultInjector, FaultyKv};
use crate::kv::memory::MemoryBackend;
use crate::kv::sqlite::SqliteBackend;
use crate::kv::{
    KeyValue, Kv, RangeRead, Stats, TRANSACTION_BYTES_MAX, Transaction, VALUE_BYTES_MAX, cost,
};
use crate::{StorageError, random_u64};

/// Size of one snapshot page, in bytes (a wasm page).
pub const PAGE_SIZE: usize = 65536;
/// Largest piece a big value (component, manifest) is split into, in bytes.
pub const VALUE_CHUNK_BYTES: usize = 90_000;
/// Page bytes above which a commit is staged in several transactions, and
/// the most page bytes a staging transaction or a group commit carries.
pub const STAGE_TXN_BYTES_MAX: usize = 1_000_000;
/// Largest value of one `extra` side record, in bytes.
pub const EXTRA_BYTES_MAX: usize = 65_536;
/// Longest name of an `extra` side record, in bytes.
pub const EXTRA_NAME_BYTES_MAX: usize = 1024;
/// Most `extra` side records one commit writes or clears.
pub const EXTRA_RECORDS_PER_COMMIT_MAX: usize = 16_384;
/// Most alarm due-index changes one commit makes.
pub const DUE_CHANGES_PER_COMMIT_MAX: usize = 1_024;
/// Most events one commit publishes.
pub const EVENTS_PER_COMMIT_MAX: usize = 256;
/// Largest event payload, in bytes.
pub const EVENT_BYTES_MAX: usize = 65_536;
/// Longest topic name, in bytes.
pub const TOPIC_BYTES_MAX: usize = 128;
/// Events kept per actor and topic: a commit clears the ones older than
/// its newest event's seq minus this.
pub const EVENTS_KEPT_PER_TOPIC: u64 = 256;
/// Most due alarms or events one listing returns.
pub const OUTBOX_LIST_MAX: usize = 1_024;
/// The largest size, as FoundationDB counts it (mutations plus read and
/// write conflict ranges, see [`crate::kv::cost`]), that one commit
/// transaction may reach, counted with an upper bound computed before it
/// runs: a group commit of several requests, the single transaction of a
/// small commit, or the manifest transaction of a staged one. Groups are
/// split to stay under it, and a request whose records other than pages
/// (manifest, `extra` records, page-version clears, activation record)
/// alone exceed it is refused up front.
///
/// Half of [`TRANSACTION_BYTES_MAX`] on purpose: FoundationDB advises
/// transactions far below its 10 MB hard limit (big ones are slow to commit,
/// and risk its 5 s duration limit and `transaction_too_old` on retries); a
/// retry resends every request of the group. It is still big enough for
/// the manifest transaction of a commit that rewrites every page of a 4 GiB
/// memory (8 bytes of manifest per page; the page versions it supersedes
/// are left to garbage collection past [`SUPERSEDED_CLEARS_INLINE_MAX`]).
pub const GROUP_TXN_BYTES_MAX: usize = 5_000_000;
/// Page versions a commit clears in its own transaction at most: a commit
/// that supersedes more leaves them, and the previous manifest naming them,
/// to [`Store::gc_snapshots`] (a clear costs about four times its key, some
/// 200 bytes, as FoundationDB counts it).
pub const SUPERSEDED_CLEARS_INLINE_MAX: usize = 4096;
/// Page versions one garbage-collection transaction clears at most.
pub const GC_PAGE_CLEARS_PER_TXN_MAX: usize = 8192;
/// Stage markers one garbage-collection transaction processes at most.
pub const GC_STAGES_PER_TXN_MAX: usize = 64;
/// Longest POP name a claim accepts, in bytes. The activation record holds
/// the name, so this bounds what a commit's rewrite of that record costs.
pub const POP_NAME_BYTES_MAX: usize = 1024;
/// Old manifests one garbage-collection transaction processes at most.
pub const GC_MANIFESTS_PER_TXN_MAX: usize = 64;
/// Largest component the store reads back, in bytes (a header claiming
/// more is corrupt): far above any deploy limit.
pub const COMPONENT_STORED_BYTES_MAX: u64 = 1 << 30;
/// Pages one batched read of a restore asks for (one round trip on
/// FoundationDB): a restore of up to this many stored pages (64 MiB of
/// memory) costs a constant number of round trips.
pub const RESTORE_PAGES_PER_READ_MAX: usize = 1024;
/// Keys one listing transaction reads at most (listings page through
/// several transactions).
pub const LIST_BATCH_KEYS_MAX: usize = 1000;

const _: () = assert!(
    PAGE_SIZE + 64 < VALUE_BYTES_MAX,
    "a page must fit in one value"
);
const _: () = assert!(
    (GROUP_TXN_BYTES_MAX as u64) * 2 <= TRANSACTION_BYTES_MAX,
    "a group commit must stay well under the transaction limit"
);
const _: () = assert!(
    STAGE_TXN_BYTES_MAX < GROUP_TXN_BYTES_MAX,
    "a group's pages fit its budget"
);

// ---------------------------------------------------------------- records

/// A deployed actor type. The config is opaque JSON owned by the runtime.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
)]
pub struct TypeRecord {
    /// sha256 hex of the component (its key under `comp/`).
    pub digest: String,
    /// Runtime-owned configuration (durability, limits...), JSON.
    pub config_json: String,
    /// When it was deployed, ms since the Unix epoch.
    pub deployed_at_ms: u64,
}

/// A client token. Only a hash of its secret is stored: whoever reads the
/// store cannot call with it. Scopes and types are the runtime's to
/// interpret.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
)]
pub struct TokenRecord {
    /// sha256 of the token's secret, hex.
    pub secret_sha256: String,
    /// What it may do (`call`, `deploy`, `admin`).
    pub scopes: Vec<String>,
    /// The actor types it is limited to (empty: all).
    pub types: Vec<String>,
    /// A note for people (who it is for).
    pub label: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// One deployed version of an actor type: every deploy of new code makes
/// one, numbered from 1.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
)]
pub struct VersionRecord {
    /// sha256 hex of its component.
    pub digest: String,
    /// Its configuration (durability, limits...), JSON owned by the runtime.
    pub config_json: String,
    /// When it was deployed, ms since the Unix epoch.
    pub deployed_at_ms: u64,
}

/// Engine configurations whose compiled code is kept per component (the
/// engines of a rolling upgrade, and a few before); putting one more drops
/// the others beyond it, code and all.
pub const COMPILED_ENGINES_PER_COMPONENT_MAX: usize = 4;

/// Most versions a type may have; a deploy past it is refused.
pub const VERSIONS_MAX: usize = 1_000;

/// Why an actor's last upgrade failed (it stays on its version).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
)]
pub struct UpgradeFailure {
    /// The version the actor stays on.
    pub from_version: u64,
    /// The version it could not move to.
    pub to_version: u64,
    /// What `save` or `load` answered, or how it trapped.
    pub error: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// The state an actor had before an upgrade (what its old version's
/// `save` wrote), kept so that a rollback can give it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreUpgrade {
    /// The version it came from.
    pub from_version: u64,
    /// The version it moved to.
    pub to_version: u64,
    /// The saved state.
    pub state: Vec<u8>,
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct PreUpgradeHeaderV1 {
    from_version: u64,
    to_version: u64,
    len: u64,
    chunks: u32,
}

/// Largest pre-upgrade state kept for one actor, bytes; a larger one is
/// not kept (that actor cannot be rolled back to its exact old state).
pub const PRE_UPGRADE_BYTES_MAX: usize = 4 << 20;

/// Most upgrade failures remembered per type; past it new ones are not
/// recorded (the count in metrics and logs goes on).
pub const UPGRADE_FAILURES_MAX: usize = 1_000;

/// Most tokens the store keeps; creating one more fails until some are
/// revoked.
pub const TOKENS_MAX: usize = 10_000;

/// Where an actor is (or was last) active.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActivationRecord {
    /// Claim epoch; +1 with every claim. Snapshot commits must carry it.
    pub epoch: u64,
    /// The POP that claimed it last.
    pub pop: String,
    /// The incarnation of that POP the claim was made for (0: made without
    /// one: by a store-level [`Store::claim`], or before records carried
    /// it). An active record whose POP has since registered again is void.
    pub incarnation: u64,
    /// Sequence number of the latest snapshot (0: none yet).
    pub head_seq: u64,
    /// Whether the claim is live (false once released).
    pub active: bool,
    /// When the last claim happened, ms since the Unix epoch.
    pub since_ms: u64,
}

/// A POP's membership record.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Archive, Serialize, Deserialize,
)]
pub struct PopRecord {
    /// Address other POPs and clients reach it at (e.g. `http://10.0.0.1:7000`).
    pub addr: String,
    /// Coordinates (e.g. latitude, longitude) for nearest-POP choice.
    pub coords: (f64, f64),
    /// The membership lease lasts until this time, ms since the Unix epoch.
    pub lease_until_ms: u64,
    /// Bumped every time the POP (re)joins.
    pub incarnation: u64,
}

/// Who claims, for `Store::claim_judged`.
struct ClaimBy<'a> {
    pop: &'a str,
    incarnation: u64,
    /// The logical claim's token (`None`: a fresh random one).
    token: Option<u64>,
    /// Whether to read the claimant's and the holder's POP records.
    read_pops: bool,
}

/// What a claim's transaction read, for its judge ([`Store::claim_as`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimFacts<'a> {
    /// The actor's activation record, if it was ever claimed.
    pub current: Option<&'a ActivationRecord>,
    /// The claimant POP's membership record (read by [`Store::claim_as`]
    /// only).
    pub claimant: Option<&'a PopRecord>,
    /// The membership record of the POP the actor is active at, if that is
    /// another POP (read by [`Store::claim_as`] only).
    pub holder: Option<&'a PopRecord>,
}

/// What a snapshot is bound to besides memory (invariants 4 and 5).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    /// sha256 hex of the component the snapshot was taken from.
    pub component_digest: String,
    /// Engine version that took it.
    pub engine_version: String,
    /// Mutable globals, in the instrumented order, as raw bits.
    pub globals: Vec<u64>,
}

/// The changes of one linear memory since the last commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryDelta {
    /// The memory's current length in bytes.
    pub len_bytes: u64,
    /// Pages that changed: (page index, exactly [`PAGE_SIZE`] bytes). Pages
    /// not listed keep their previous content; pages that did not exist
    /// before and are not listed are zero. A page at or beyond
    /// `len_bytes` is an error.
    pub changed_pages: Vec<(u32, Vec<u8>)>,
}

/// One snapshot commit (one turn's changes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitRequest {
    /// The actor.
    pub actor: String,
    /// The epoch of the caller's claim (the fence).
    pub epoch: u64,
    /// The head the caller built on (0 for the first snapshot).
    pub expected_head_seq: u64,
    /// Component digest, engine version, globals.
    pub meta: SnapshotMeta,
    /// One delta per core linear memory, in order.
    pub memories: Vec<MemoryDelta>,
    /// Small side records committed atomically with the turn (e.g.
    /// idempotency keys), stored under `snap/<actor>/x/<name>` and returned
    /// by `load_snapshot`. An empty value deletes the record. Each value is
    /// at most [`EXTRA_BYTES_MAX`] bytes.
    pub extra: Vec<(String, Vec<u8>)>,
    /// Alarm due-index entries to add or remove with this commit (see
    /// [`Store::list_due`]). The alarm itself is the caller's `extra`
    /// record; the index only says when to wake the actor.
    pub due: Vec<DueChange>,
    /// Events this commit publishes, stored under `ev/<actor>/<topic>/<seq>`
    /// and read back with [`Store::read_events`]. Each topic keeps its
    /// newest [`EVENTS_KEPT_PER_TOPIC`] events; the commit clears older ones.
    pub events: Vec<EventRecord>,
}

/// One change to the alarm due index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueChange {
    /// When the alarm is due, ms since the Unix epoch.
    pub at_ms: u64,
    /// The alarm's id (unique per actor).
    pub id: u64,
    /// Add the entry (`true`) or remove it (`false`).
    pub set: bool,
}

/// An alarm that is due, from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAlarm {
    /// When it was due, ms since the Unix epoch.
    pub at_ms: u64,
    /// The actor (`type/id`).
    pub actor: String,
    /// The alarm's id.
    pub id: u64,
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Its topic: 1 to [`TOPIC_BYTES_MAX`] bytes.
    pub topic: String,
    /// Its number in the topic: 1, 2, 3... with no gap.
    pub seq: u64,
    /// Its payload: at most [`EVENT_BYTES_MAX`] bytes.
    pub payload: Vec<u8>,
}

/// A snapshot as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// Its sequence number (the head).
    pub seq: u64,
    /// The epoch that committed it.
    pub epoch: u64,
    /// Component digest, engine version, globals.
    pub meta: SnapshotMeta,
    /// Full images, `len_bytes` each.
    pub memories: Vec<Vec<u8>>,
    /// All side records of the actor, sorted by name.
    pub extra: Vec<(String, Vec<u8>)>,
}

/// The head snapshot of an actor without its memory pages
/// ([`Store::load_snapshot_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHead {
    /// Its sequence number (the head).
    pub seq: u64,
    /// The epoch that committed it.
    pub epoch: u64,
    /// Component digest, engine version, globals.
    pub meta: SnapshotMeta,
    /// The byte length of each memory.
    pub memory_lens: Vec<u64>,
    /// All side records of the actor, sorted by name.
    pub extra: Vec<(String, Vec<u8>)>,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Manifests (older than the head) removed.
    pub manifests_deleted: u64,
    /// Page values removed.
    pub pages_deleted: u64,
    /// Stage markers of abandoned or finished staged commits removed.
    pub stages_deleted: u64,
    /// Transactions used.
    pub transactions: u64,
}

// --------------------------------------------------------- stored formats

/// The activation record as stored before it named the claimant's
/// incarnation ([`FORMAT_V1`] envelope); still read, never written.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct ActV1 {
    epoch: u64,
    pop: String,
    head_seq: u64,
    active: bool,
    since_ms: u64,
    claim_token: u64,
}

/// Envelope format of [`ActV2`] activation records.
const FORMAT_ACT_V2: u8 = 4;

/// The activation record as stored ([`FORMAT_ACT_V2`] envelope).
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct ActV2 {
    epoch: u64,
    pop: String,
    /// The claimant POP's incarnation (0: none given).
    incarnation: u64,
    head_seq: u64,
    active: bool,
    since_ms: u64,
    /// Random per claim call, to recognise our own commit after
    /// `commit_unknown_result`.
    claim_token: u64,
}

impl ActV2 {
    fn public(&self) -> ActivationRecord {
        ActivationRecord {
            epoch: self.epoch,
            pop: self.pop.clone(),
            incarnation: self.incarnation,
            head_seq: self.head_seq,
            active: self.active,
            since_ms: self.since_ms,
        }
    }

    fn encode(&self) -> Vec<u8> {
        encode_as(FORMAT_ACT_V2, self)
    }

    /// Reads either stored format (a [`ActV1`] record has incarnation 0).
    fn decode(key: &[u8], bytes: &[u8]) -> Result<ActV2, StorageError> {
        if bytes.first() == Some(&crate::codec::FORMAT_V1) {
            let a: ActV1 = decode(key, bytes)?;
            return Ok(ActV2 {
                epoch: a.epoch,
                pop: a.pop,
                incarnation: 0,
                head_seq: a.head_seq,
                active: a.active,
                since_ms: a.since_ms,
                claim_token: a.claim_token,
            });
        }
        decode_as(FORMAT_ACT_V2, key, bytes)
    }
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct MemMapV1 {
    len_bytes: u64,
    /// Per page: the seq whose page value holds it, 0 = zero page.
    pages: Vec<u64>,
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct ManifestV2 {
    /// The actor and snapshot version it belongs to (so its envelope
    /// checksum binds it there: a manifest moved elsewhere is refused).
    actor: String,
    seq: u64,
    epoch: u64,
    /// Random per commit call, to recognise our own commit after
    /// `commit_unknown_result`.
    token: u64,
    component_digest: String,
    engine_version: String,
    globals: Vec<u64>,
    memories: Vec<MemMapV1>,
}

impl ManifestV2 {
    fn refs(&self) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
        self.memories.iter().enumerate().flat_map(|(m, mm)| {
            mm.pages
                .iter()
                .enumerate()
                .filter(|(_, s)| **s != 0)
                .map(move |(p, s)| (m as u32, p as u32, *s))
        })
    }
}

/// A page value, in a [`FORMAT_V3`] envelope: the page image packed by
/// [`pack_page`] (lz4 or raw).
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct PageV2 {
    /// Epoch of the commit that wrote it (GC of abandoned stages).
    epoch: u64,
    /// How `data` holds the image: `codec::PAGE_LZ4` or `codec::PAGE_RAW`.
    encoding: u8,
    /// crc32 of the uncompressed [`PAGE_SIZE`] image.
    image_crc: u32,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct StageMarkerV1 {
    epoch: u64,
    pages: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct CompHeaderV1 {
    len: u64,
    chunks: u32,
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
struct ExtraV1 {
    data: Vec<u8>,
}

// ------------------------------------------------------------------ store

/// Handle to the store. Cheap to clone; clones share the backend and the
/// counters.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// How many page versions a commit clears inline, and a GC step at most
/// (the constants; tests lower them to exercise the splits cheaply).
#[derive(Debug, Clone, Copy)]
struct ClearLimits {
    inline: usize,
    gc_step: usize,
}

const CLEAR_LIMITS: ClearLimits = ClearLimits {
    inline: SUPERSEDED_CLEARS_INLINE_MAX,
    gc_step: GC_PAGE_CLEARS_PER_TXN_MAX,
};

struct Inner {
    kv: Kv,
    faults: Option<FaultInjector>,
    clears: ClearLimits,
    /// Seals snapshot pages written through this handle, and opens sealed
    /// ones (`None`: pages are written in the clear).
    page_key: Option<crate::codec::PageKey>,
    /// Migration records appended through this handle (and its clones):
    /// every `MIGRATION_TRIM_EVERY`-th append trims them.
    migrations_appended: std::sync::atomic::AtomicU64,
}

/// What a commit transaction reads before it writes (see
/// [`Store::read_commit_facts`]).
struct CommitFacts {
    act: Option<ActV2>,
    /// The manifest at the request's next seq, read only when the head is
    /// already there.
    next: Option<ManifestV2>,
    /// The head manifest the request builds on, when asked for.
    prev: Option<ManifestV2>,
}

struct Prepared<'a> {
    req: &'a CommitRequest,
    token: u64,
    /// Superseded page versions cleared inline at most.
    inline_clears_max: usize,
    /// (memory, page, page value or None for an all-zero page), deduplicated.
    pages: Vec<(u32, u32, Option<Vec<u8>>)>,
    /// Page values plus 64 bytes each: what decides staging.
    page_bytes: usize,
    /// Encoded `extra` records, due-index entries and events: (key,
    /// value, or None to clear).
    extras: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Ranges cleared with the commit: events past their topic's retention.
    range_clears: Vec<(Vec<u8>, Vec<u8>)>,
    /// Upper bound of the size (as FoundationDB counts it) the commit's
    /// manifest transaction adds when the pages are staged before it:
    /// manifest parts, the previous manifest's clear, page-version clears,
    /// stage token clear, extras, activation record.
    side_bytes: usize,
    /// Upper bound of the size of the whole commit in one transaction:
    /// `side_bytes`, the sets of its pages, and its reads' conflict ranges.
    txn_bytes: usize,
}

impl Prepared<'_> {
    /// Whether the pages go through staging transactions first.
    fn staged(&self) -> bool {
        self.page_bytes > STAGE_TXN_BYTES_MAX || self.txn_bytes > GROUP_TXN_BYTES_MAX
    }

    /// Upper bound of the size [`Store::apply_commit`] adds (writes only).
    fn apply_bytes(&self, staged: bool) -> usize {
        if staged {
            self.side_bytes
        } else {
            self.txn_bytes
        }
    }
}

/// Upper bound of an encoded activation record (its POP name is at most
/// [`POP_NAME_BYTES_MAX`]; the other fields have a fixed size).
fn act_value_bytes_bound() -> usize {
    static BOUND: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BOUND.get_or_init(|| {
        ActV2 {
            epoch: u64::MAX,
            pop: "p".repeat(POP_NAME_BYTES_MAX),
            incarnation: u64::MAX,
            head_seq: u64::MAX,
            active: true,
            since_ms: u64::MAX,
            claim_token: u64::MAX,
        }
        .encode()
        .len()
    })
}

enum StageOutcome {
    Staged,
    AlreadyCommitted(u64),
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

fn pages_for(len_bytes: u64) -> usize {
    len_bytes.div_ceil(PAGE_SIZE as u64) as usize
}

impl Store {
    /// Opens a store by URL: `memory` or `memory:` (a new, private in-process
    /// store), `sqlite:PATH` (a file shared by every process that opens
    /// it; parent directories are created), or `fdb:CLUSTER_FILE` (a
    /// FoundationDB cluster; needs the `fdb` feature, otherwise an error
    /// saying so).
    pub fn open(url: &str) -> Result<Store, StorageError> {
        if url == "memory" || url == "memory:" {
            return Ok(Store::memory());
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StorageError::UnsupportedUrl {
                    url: url.to_string(),
                });
            }
            return Store::sqlite(Path::new(path));
        }
        if let Some(path) = url.strip_prefix("fdb:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StorageError::UnsupportedUrl {
                    url: url.to_string(),
                });
            }
            return Store::fdb(Path::new(path));
        }
        Err(StorageError::UnsupportedUrl {
            url: url.to_string(),
        })
    }

    /// A new in-process store.
    pub fn memory() -> Store {
        Store::memory_with_faults().0
    }

    /// A new in-process store and the handle that injects commit faults
    /// into it.
    pub fn memory_with_faults() -> (Store, FaultInjector) {
        let (backend, faults) = FaultyKv::new(Arc::new(MemoryBackend::new()));
        let store = Store::from_kv(Kv::new(Arc::new(backend)), Some(faults.clone()));
        (store, faults)
    }

    /// Opens a sqlite store at `path`.
    pub fn sqlite(path: &Path) -> Result<Store, StorageError> {
        let backend = SqliteBackend::open(path)?;
        Ok(Store::from_kv(Kv::new(Arc::new(backend)), None))
    }

    /// Opens the FoundationDB cluster named by `cluster_file`.
    #[cfg(feature = "fdb")]
    pub fn fdb(cluster_file: &Path) -> Result<Store, StorageError> {
        let backend = crate::kv::fdb::FdbBackend::open(cluster_file)?;
        Ok(Store::from_kv(Kv::new(Arc::new(backend)), None))
    }

    /// Without the `fdb` feature: always an error that says how to get it.
    #[cfg(not(feature = "fdb"))]
    pub fn fdb(cluster_file: &Path) -> Result<Store, StorageError> {
        Err(StorageError::Backend {
            backend: "fdb",
            message: format!(
                "\"fdb:{}\": this build has no FoundationDB support; rebuild with the `fdb` feature of tern-storage (e.g. `cargo build -p tern-runtime --features tern-storage/fdb`)",
                cluster_file.display()
            ),
        })
    }

    /// A store over any KV (e.g. a custom backend).
    pub fn from_kv(kv: Kv, faults: Option<FaultInjector>) -> Store {
        Store {
            inner: Arc::new(Inner {
                kv,
                faults,
                clears: CLEAR_LIMITS,
                page_key: None,
                migrations_appended: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Sets how long transactions are retried (see [`Kv::transact`]).
    pub fn with_retry_budget(self, budget: std::time::Duration) -> Store {
        let faults = self.inner.faults.clone();
        let key = self.inner.page_key.clone();
        let s = Store::from_kv(self.inner.kv.clone().with_retry_budget(budget), faults);
        match key {
            Some(k) => s.with_page_key(k),
            None => s,
        }
    }

    /// Seals the snapshot pages this handle writes with `key`
    /// (XChaCha20-Poly1305, bound to each page's place) and opens sealed
    /// pages with it. Pages written in the clear before stay readable.
    pub fn with_page_key(self, key: crate::codec::PageKey) -> Store {
        Store {
            inner: Arc::new(Inner {
                kv: self.inner.kv.clone(),
                faults: self.inner.faults.clone(),
                clears: self.inner.clears,
                page_key: Some(key),
                migrations_appended: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Test hook: lowers [`SUPERSEDED_CLEARS_INLINE_MAX`] to `inline` and
    /// [`GC_PAGE_CLEARS_PER_TXN_MAX`] to `gc_step` for this handle.
    #[cfg(test)]
    pub(crate) fn with_clear_limits(self, inline: usize, gc_step: usize) -> Store {
        assert!(gc_step > 0, "a GC step must clear something");
        Store {
            inner: Arc::new(Inner {
                kv: self.inner.kv.clone(),
                faults: self.inner.faults.clone(),
                clears: ClearLimits { inline, gc_step },
                page_key: self.inner.page_key.clone(),
                migrations_appended: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The fault injector, for memory stores.
    pub fn fault_injector(&self) -> Option<FaultInjector> {
        self.inner.faults.clone()
    }

    /// Raw KV access, for tests and tools. The runtime must not use raw keys.
    pub fn kv(&self) -> &Kv {
        &self.inner.kv
    }

    /// Byte and transaction counters (shared by clones).
    pub fn stats(&self) -> Stats {
        self.inner.kv.stats()
    }

    /// Backend name ("memory", "sqlite", "fdb").
    pub fn backend_name(&self) -> &'static str {
        self.inner.kv.backend_name()
    }

    fn kv_(&self) -> &Kv {
        &self.inner.kv
    }

    /// How many migration records this handle appended before this one.
    pub(crate) fn next_migration_append(&self) -> u64 {
        self.inner
            .migrations_appended
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads every pair under `prefix`, paging through several read
    /// transactions of at most [`LIST_BATCH_KEYS_MAX`] keys (not one
    /// consistent snapshot).
    /// The record at `key`, decoded, if any.
    fn get_record<T>(&self, key: &[u8]) -> Result<Option<T>, StorageError>
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        self.kv_()
            .read(|tx| tx.get(key))?
            .map(|v| decode(key, &v))
            .transpose()
    }

    /// Every record under `prefix`, decoded, by the name that ends its key.
    fn list_named<T>(&self, prefix: &[u8]) -> Result<Vec<(String, T)>, StorageError>
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        self.scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| Ok((keys::last_str(&k)?, decode(&k, &v)?)))
            .collect()
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        let end = crate::tuple::range_end(prefix);
        let mut begin = prefix.to_vec();
        let mut out = Vec::new();
        loop {
            let batch = self
                .kv_()
                .read(|tx| tx.get_range(&begin, &end, Some(LIST_BATCH_KEYS_MAX), false))?;
            let full = batch.len() == LIST_BATCH_KEYS_MAX;
            if let Some((k, _)) = batch.last() {
                begin = k.clone();
                begin.push(0);
            }
            out.extend(batch);
            if !full {
                return Ok(out);
            }
        }
    }

    // ------------------------------------------------------------ components

    /// Stores a component, content-addressed by its sha256 (hex), and
    /// returns the digest. Storing the same bytes again is a no-op. Big
    /// components are chunked under [`VALUE_CHUNK_BYTES`] and written in
    /// transactions of about [`STAGE_TXN_BYTES_MAX`]; the header that makes
    /// them visible is written last.
    pub fn put_component(&self, bytes: &[u8]) -> Result<String, StorageError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let header_key = keys::comp_header(&digest);
        if self.kv_().read(|tx| tx.get(&header_key))?.is_some() {
            return Ok(digest);
        }
        let chunks: Vec<&[u8]> = bytes.chunks(VALUE_CHUNK_BYTES).collect();
        let per_txn = (STAGE_TXN_BYTES_MAX / VALUE_CHUNK_BYTES).max(1);
        let groups: Vec<(usize, &[&[u8]])> = chunks
            .chunks(per_txn)
            .enumerate()
            .map(|(g, c)| (g * per_txn, c))
            .collect();
        let header = encode(&CompHeaderV1 {
            len: bytes.len() as u64,
            chunks: chunks.len() as u32,
        });
        let last = groups.len().saturating_sub(1);
        for (gi, (first, group)) in groups.iter().enumerate() {
            self.kv_().transact(|tx| {
                for (i, c) in group.iter().enumerate() {
                    tx.set(&keys::comp_chunk(&digest, (first + i) as u64), c);
                }
                if gi == last {
                    tx.set(&header_key, &header);
                }
                Ok(())
            })?;
        }
        if groups.is_empty() {
            self.kv_().transact(|tx| {
                tx.set(&header_key, &header);
                Ok(())
            })?;
        }
        Ok(digest)
    }

    /// Loads a component by digest; `None` if absent. The bytes are checked
    /// against the digest (`Corrupt` on mismatch).
    pub fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let header_key = keys::comp_header(digest);
        self.kv_().read(|tx| {
            let Some(h) = tx.get(&header_key)? else {
                return Ok(None);
            };
            let h: CompHeaderV1 = decode(&header_key, &h)?;
            // The header says how many chunks there are: ask for all of
            // them at once (one round trip on FoundationDB, where a range
            // read of a big component would take one per 80 kB reply).
            if h.len > COMPONENT_STORED_BYTES_MAX
                || u64::from(h.chunks) != h.len.div_ceil(VALUE_CHUNK_BYTES as u64)
            {
                return Err(StorageError::corrupt(
                    &header_key,
                    format!(
                        "the header says {} bytes in {} chunks of at most {VALUE_CHUNK_BYTES} bytes",
                        h.len, h.chunks
                    ),
                ));
            }
            let wanted: Vec<Vec<u8>> = (0..u64::from(h.chunks))
                .map(|i| keys::comp_chunk(digest, i))
                .collect();
            let chunks = tx.get_many(&wanted)?;
            let mut out = Vec::with_capacity(h.len as usize);
            for (key, c) in wanted.iter().zip(chunks) {
                let c = c.ok_or_else(|| StorageError::corrupt(key, "component chunk missing"))?;
                out.extend_from_slice(&c);
            }
            let got = hex::encode(Sha256::digest(&out));
            if out.len() as u64 != h.len || got != digest {
                return Err(StorageError::corrupt(
                    &header_key,
                    format!(
                        "component bytes ({} bytes, sha256 {got}) do not match the digest",
                        out.len()
                    ),
                ));
            }
            Ok(Some(out))
        })
    }

    /// Keeps the compiled code of component `digest` for the engine
    /// configuration `engine` (an opaque key): the code is stored like a
    /// component (content-addressed, chunked, checked against its sha256
    /// on every read), and a small record names it.
    ///
    /// The collector of these records: code the record replaces (a
    /// recompile after a damaged entry) is deleted, and a component keeps
    /// the code of at most [`COMPILED_ENGINES_PER_COMPONENT_MAX`] engine
    /// configurations (this one and the first others in key order); the
    /// rest is deleted with its code. A POP that read a record whose code
    /// is then deleted finds no code and compiles, as for any cache miss.
    pub fn put_compiled(
        &self,
        digest: &str,
        engine: &str,
        code: &[u8],
    ) -> Result<(), StorageError> {
        let code_digest = self.put_component(code)?;
        let key = keys::compiled(digest, engine);
        let prefix = keys::compiled_prefix(digest);
        let dropped = self.kv_().transact(|tx| {
            let records = tx.get_prefix(&prefix)?;
            let mut kept = 1;
            let mut keep: Vec<Vec<u8>> = vec![code_digest.as_bytes().to_vec()];
            let mut drop: Vec<Vec<u8>> = Vec::new();
            for (k, v) in records {
                if k == key {
                    if v != code_digest.as_bytes() {
                        drop.push(v);
                    }
                } else if kept < COMPILED_ENGINES_PER_COMPONENT_MAX {
                    kept += 1;
                    keep.push(v);
                } else {
                    tx.clear(&k);
                    drop.push(v);
                }
            }
            tx.set(&key, code_digest.as_bytes());
            // Code another kept record still names stays.
            drop.retain(|d| !keep.contains(d));
            drop.sort();
            drop.dedup();
            Ok(drop)
        })?;
        for old in dropped {
            let Ok(old) = String::from_utf8(old) else {
                continue;
            };
            // One range clear: the code's header and chunks go at once.
            let comp = keys::comp_prefix(&old);
            let end = crate::tuple::range_end(&comp);
            self.kv_().transact(|tx| {
                tx.clear_range(&comp, &end);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The compiled code [`Store::put_compiled`] kept for component
    /// `digest` and engine `engine`, if any (checked against its digest).
    pub fn get_compiled(
        &self,
        digest: &str,
        engine: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let key = keys::compiled(digest, engine);
        let Some(code_digest) = self.kv_().read(|tx| tx.get(&key))? else {
            return Ok(None);
        };
        let code_digest = std::str::from_utf8(&code_digest)
            .ok()
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| StorageError::corrupt(&key, "not a sha256 digest"))?;
        self.get_component(code_digest)
    }

    // ----------------------------------------------------------------- types

    /// Creates or replaces an actor type.
    pub fn put_type(&self, name: &str, rec: &TypeRecord) -> Result<(), StorageError> {
        let key = keys::type_(name);
        let val = encode(rec);
        self.kv_().transact(|tx| {
            tx.set(&key, &val);
            Ok(())
        })
    }

    /// Reads an actor type.
    pub fn get_type(&self, name: &str) -> Result<Option<TypeRecord>, StorageError> {
        self.get_record(&keys::type_(name))
    }

    /// Removes an actor type (its component and actors stay).
    pub fn delete_type(&self, name: &str) -> Result<(), StorageError> {
        let key = keys::type_(name);
        self.kv_().transact(|tx| {
            tx.clear(&key);
            Ok(())
        })
    }

    /// Every actor type, sorted by name.
    pub fn list_types(&self) -> Result<Vec<(String, TypeRecord)>, StorageError> {
        self.list_named(&keys::type_prefix())
    }

    // -------------------------------------------------------------- versions

    /// Records a deploy of `name` as a new version and makes it the type's
    /// current code, in one transaction: the type record gets `digest`
    /// and the config `config_for(n)` (the runtime's, which names the
    /// version `n`). Deploying the current code again changes its
    /// configuration only; any other code (even an older version's, after
    /// a rollback) is a new version, which clears the states kept from
    /// before the previous rollout and its failures. Returns the version.
    pub fn deploy_version(
        &self,
        name: &str,
        digest: &str,
        deployed_at_ms: u64,
        config_for: &dyn Fn(u64) -> String,
    ) -> Result<u64, StorageError> {
        let prefix = keys::version_prefix(name);
        let type_key = keys::type_(name);
        self.kv_().transact(|tx| {
            let end = crate::tuple::range_end(&prefix);
            let existing = tx.get_range(&prefix, &end, Some(1), true)?;
            let newest = existing.first().map(|(k, v)| -> Result<_, StorageError> {
                Ok((keys::last_int(k)?, decode::<VersionRecord>(k, v)?))
            });
            let mut newest = newest.transpose()?;
            if newest.is_none()
                && let Some(v) = tx.get(&type_key)?
            {
                // A type deployed before versions existed: its code becomes
                // version 1, so its actors can move by state transfer.
                let t: TypeRecord = decode(&type_key, &v)?;
                let first = VersionRecord {
                    digest: t.digest,
                    config_json: t.config_json,
                    deployed_at_ms: t.deployed_at_ms,
                };
                tx.set(&keys::version(name, 1), &encode(&first));
                newest = Some((1, first));
            }
            // The code running now (after a rollback it is not the newest).
            let current = tx
                .get(&type_key)?
                .map(|v| decode::<TypeRecord>(&type_key, &v))
                .transpose()?;
            let same_code = current.as_ref().is_some_and(|t| t.digest == digest);
            let n = if same_code {
                // A configuration change of the current code: its version.
                let all = tx.get_range(&prefix, &end, Some(VERSIONS_MAX + 1), false)?;
                let mut found = None;
                for (k, v) in all.iter().rev() {
                    if decode::<VersionRecord>(k, v)?.digest == digest {
                        found = Some(keys::last_int(k)?);
                        break;
                    }
                }
                match (found, &newest) {
                    (Some(n), _) => n,
                    (None, Some((n, _))) => n + 1,
                    (None, None) => 1,
                }
            } else {
                newest.as_ref().map_or(1, |(n, _)| n + 1)
            };
            if n as usize > VERSIONS_MAX {
                return Err(StorageError::InvalidArgument(format!(
                    "type `{name}` has {VERSIONS_MAX} versions, its maximum (VERSIONS_MAX); deploy it under a new name"
                )));
            }
            let config_json = config_for(n);
            if !same_code {
                // A new rollout: the states kept from the previous one, and
                // its failures, go.
                for p in [keys::pre_upgrade_prefix(name), keys::upgrade_failure_prefix(name)] {
                    tx.clear_range(&p, &crate::tuple::range_end(&p));
                }
            }
            tx.set(
                &keys::version(name, n),
                &encode(&VersionRecord {
                    digest: digest.to_string(),
                    config_json: config_json.clone(),
                    deployed_at_ms,
                }),
            );
            tx.set(
                &type_key,
                &encode(&TypeRecord {
                    digest: digest.to_string(),
                    config_json,
                    deployed_at_ms,
                }),
            );
            Ok(n)
        })
    }

    /// Keeps `actor`'s state from before its upgrade (replacing an older
    /// one). Refused over [`PRE_UPGRADE_BYTES_MAX`]. At most one per actor,
    /// and every deploy of the type clears them all, so they are bounded
    /// by the type's actors and live until the next rollout.
    pub fn put_pre_upgrade(
        &self,
        ty: &str,
        actor: &str,
        p: &PreUpgrade,
    ) -> Result<(), StorageError> {
        if p.state.len() > PRE_UPGRADE_BYTES_MAX {
            return Err(StorageError::InvalidArgument(format!(
                "the state of {actor} before its upgrade is {} bytes, over PRE_UPGRADE_BYTES_MAX ({PRE_UPGRADE_BYTES_MAX}); it is not kept",
                p.state.len()
            )));
        }
        let chunks: Vec<&[u8]> = p.state.chunks(VALUE_CHUNK_BYTES).collect();
        let header = encode(&PreUpgradeHeaderV1 {
            from_version: p.from_version,
            to_version: p.to_version,
            len: p.state.len() as u64,
            chunks: chunks.len() as u32,
        });
        let all = keys::pre_upgrade_actor(ty, actor);
        let end = crate::tuple::range_end(&all);
        self.kv_().transact(|tx| {
            tx.clear_range(&all, &end);
            for (i, c) in chunks.iter().enumerate() {
                tx.set(&keys::pre_upgrade_chunk(ty, actor, i as u64), c);
            }
            tx.set(&keys::pre_upgrade_header(ty, actor), &header);
            Ok(())
        })
    }

    /// `actor`'s state from before its last upgrade, if kept.
    pub fn get_pre_upgrade(
        &self,
        ty: &str,
        actor: &str,
    ) -> Result<Option<PreUpgrade>, StorageError> {
        let hkey = keys::pre_upgrade_header(ty, actor);
        self.kv_().read(|tx| {
            let Some(h) = tx.get(&hkey)? else {
                return Ok(None);
            };
            let h: PreUpgradeHeaderV1 = decode(&hkey, &h)?;
            let mut state = Vec::with_capacity(h.len as usize);
            for i in 0..h.chunks as u64 {
                let k = keys::pre_upgrade_chunk(ty, actor, i);
                let c = tx
                    .get(&k)?
                    .ok_or_else(|| StorageError::corrupt(&k, "a pre-upgrade chunk is missing"))?;
                state.extend_from_slice(&c);
            }
            if state.len() as u64 != h.len {
                return Err(StorageError::corrupt(
                    &hkey,
                    format!(
                        "the pre-upgrade state is {} bytes, its header says {}",
                        state.len(),
                        h.len
                    ),
                ));
            }
            Ok(Some(PreUpgrade {
                from_version: h.from_version,
                to_version: h.to_version,
                state,
            }))
        })
    }

    /// The component digest of `actor`'s head snapshot (no pages read).
    pub fn snapshot_digest(&self, actor: &str) -> Result<Option<String>, StorageError> {
        self.kv_().read(|tx| {
            let Some(act) = Self::read_act(tx, actor)? else {
                return Ok(None);
            };
            if act.head_seq == 0 {
                return Ok(None);
            }
            Ok(Self::read_manifest(tx, actor, act.head_seq)?.map(|m| m.component_digest))
        })
    }

    /// Actors ever claimed whose name starts with `TYPE/`, sorted, at most
    /// `limit`.
    pub fn list_actors_of_type(&self, ty: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        let all = keys::act_prefix();
        let mut begin = keys::act(&format!("{ty}/"));
        // Drop the string terminator: every actor `TYPE/...` extends it.
        begin.pop();
        let end = crate::tuple::range_end(&begin);
        debug_assert!(begin.starts_with(&all));
        let rows = self
            .kv_()
            .read(|tx| tx.get_range(&begin, &end, Some(limit), false))?;
        rows.into_iter().map(|(k, _)| keys::last_str(&k)).collect()
    }

    /// Makes version `n` of `name` (which must exist) the type's current
    /// code again, with `config_json` (a rollback). Kept pre-upgrade
    /// states stay: they are what the rollback gives back.
    pub fn set_current_version(
        &self,
        name: &str,
        n: u64,
        config_json: &str,
        at_ms: u64,
    ) -> Result<(), StorageError> {
        let vkey = keys::version(name, n);
        let type_key = keys::type_(name);
        self.kv_().transact(|tx| {
            let v = tx.get(&vkey)?.ok_or_else(|| {
                StorageError::InvalidArgument(format!("type `{name}` has no version {n}"))
            })?;
            let v: VersionRecord = decode(&vkey, &v)?;
            tx.set(
                &type_key,
                &encode(&TypeRecord {
                    digest: v.digest,
                    config_json: config_json.to_string(),
                    deployed_at_ms: at_ms,
                }),
            );
            Ok(())
        })
    }

    /// Every version of a type, oldest first.
    pub fn list_versions(&self, name: &str) -> Result<Vec<(u64, VersionRecord)>, StorageError> {
        self.scan_prefix(&keys::version_prefix(name))?
            .into_iter()
            .map(|(k, v)| Ok((keys::last_int(&k)?, decode(&k, &v)?)))
            .collect()
    }

    /// Remembers why `actor`'s upgrade failed (bounded by
    /// [`UPGRADE_FAILURES_MAX`] per type; `false` if not recorded).
    pub fn record_upgrade_failure(
        &self,
        ty: &str,
        actor: &str,
        f: &UpgradeFailure,
    ) -> Result<bool, StorageError> {
        let key = keys::upgrade_failure(ty, actor);
        let prefix = keys::upgrade_failure_prefix(ty);
        let val = encode(f);
        self.kv_().transact(|tx| {
            if tx.get(&key)?.is_none() {
                let end = crate::tuple::range_end(&prefix);
                let held = tx.get_range(&prefix, &end, Some(UPGRADE_FAILURES_MAX), false)?;
                if held.len() >= UPGRADE_FAILURES_MAX {
                    return Ok(false);
                }
            }
            tx.set(&key, &val);
            Ok(true)
        })
    }

    /// Forgets `actor`'s upgrade failure (it upgraded, or rolled back).
    pub fn clear_upgrade_failure(&self, ty: &str, actor: &str) -> Result<(), StorageError> {
        let key = keys::upgrade_failure(ty, actor);
        self.kv_().transact(|tx| {
            tx.clear(&key);
            Ok(())
        })
    }

    /// The upgrade failures of a type's actors, by actor.
    pub fn list_upgrade_failures(
        &self,
        ty: &str,
    ) -> Result<Vec<(String, UpgradeFailure)>, StorageError> {
        self.list_named(&keys::upgrade_failure_prefix(ty))
    }

    // ---------------------------------------------------------------- tokens

    /// Stores a new client token under `id`; fails if `id` exists or
    /// [`TOKENS_MAX`] tokens exist already.
    pub fn create_token(&self, id: &str, rec: &TokenRecord) -> Result<(), StorageError> {
        if id.is_empty() || id.len() > 64 {
            return Err(StorageError::InvalidArgument(
                "a token id is 1 to 64 bytes".into(),
            ));
        }
        let existing = self.scan_prefix(&keys::token_prefix())?.len();
        if existing >= TOKENS_MAX {
            return Err(StorageError::InvalidArgument(format!(
                "the store holds {existing} tokens, its maximum (TOKENS_MAX); revoke some first"
            )));
        }
        let key = keys::token(id);
        let val = encode(rec);
        self.kv_().transact(|tx| {
            if let Some(old) = tx.get(&key)? {
                // Our own write, seen again after commit_unknown_result.
                if old == val {
                    return Ok(());
                }
                return Err(StorageError::InvalidArgument(format!(
                    "token id {id} exists"
                )));
            }
            tx.set(&key, &val);
            Ok(())
        })
    }

    /// Reads a client token.
    pub fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StorageError> {
        self.get_record(&keys::token(id))
    }

    /// Removes a client token; `false` if there was none.
    pub fn delete_token(&self, id: &str) -> Result<bool, StorageError> {
        let key = keys::token(id);
        self.kv_().transact(|tx| {
            let had = tx.get(&key)?.is_some();
            tx.clear(&key);
            Ok(had)
        })
    }

    /// Every client token, sorted by id (at most [`TOKENS_MAX`]).
    pub fn list_tokens(&self) -> Result<Vec<(String, TokenRecord)>, StorageError> {
        self.list_named(&keys::token_prefix())
    }

    // ----------------------------------------------------------- activations

    /// The activation record `key` from an exact-key range read of it.
    fn act_of(key: &[u8], kvs: Vec<KeyValue>) -> Result<Option<ActV2>, StorageError> {
        assert!(
            kvs.len() <= 1,
            "an exact-key range read returned {} keys",
            kvs.len()
        );
        kvs.into_iter()
            .next()
            .map(|(_, v)| ActV2::decode(key, &v))
            .transpose()
    }

    fn read_act(tx: &mut Transaction, actor: &str) -> Result<Option<ActV2>, StorageError> {
        let key = keys::act(actor);
        tx.get(&key)?.map(|v| ActV2::decode(&key, &v)).transpose()
    }

    /// The activation record of an actor, if it was ever claimed.
    pub fn get_activation(&self, actor: &str) -> Result<Option<ActivationRecord>, StorageError> {
        Ok(self
            .kv_()
            .read(|tx| Self::read_act(tx, actor))?
            .map(|a| a.public()))
    }

    /// Claims `actor` for `pop`, in one transaction. If it is active at
    /// another POP and `may_take_over(&current)` is false, fails with
    /// `HeldElsewhere`. Otherwise writes epoch+1, `pop`, active, `since_ms =
    /// now_ms`, keeps `head_seq`, and moves the `act_by_pop` index entry.
    /// A claim by the POP that already holds it also bumps the epoch.
    /// Safe under `commit_unknown_result`: a re-run recognises its own claim.
    /// The record names no incarnation (0); the directory uses
    /// [`Store::claim_as`].
    pub fn claim(
        &self,
        actor: &str,
        pop: &str,
        now_ms: u64,
        may_take_over: &dyn Fn(&ActivationRecord) -> bool,
    ) -> Result<ActivationRecord, StorageError> {
        let judge = |f: &ClaimFacts| match f.current {
            Some(c) if c.active && c.pop != pop && !may_take_over(c) => {
                Err(StorageError::HeldElsewhere {
                    actor: actor.to_string(),
                    pop: c.pop.clone(),
                    epoch: c.epoch,
                })
            }
            _ => Ok(()),
        };
        let by = ClaimBy {
            pop,
            incarnation: 0,
            token: None,
            read_pops: false,
        };
        self.claim_judged(actor, by, now_ms, &judge)?
    }

    /// Claims `actor` for `pop`'s `incarnation` in one transaction that
    /// also reads the claimant's POP record and, if the actor is active at
    /// another POP, that POP's record: `judge` decides on all of them
    /// together, so what it checks (the claimant's lease, the holder's) is
    /// still true when the claim commits. A refusal (`Ok(Err(e))`) writes
    /// nothing. A granted claim writes epoch+1 for `pop` and `incarnation`
    /// as [`Store::claim`] does. Safe under `commit_unknown_result`.
    ///
    /// `token` (non-zero) names the logical claim: if the actor's record is
    /// still the grant of a claim with this token (sent again, through
    /// another directory), that grant is returned, not a new epoch.
    pub fn claim_as<E>(
        &self,
        actor: &str,
        pop: &str,
        incarnation: u64,
        now_ms: u64,
        token: u64,
        judge: &dyn Fn(&ClaimFacts) -> Result<(), E>,
    ) -> Result<Result<ActivationRecord, E>, StorageError> {
        let by = ClaimBy {
            pop,
            incarnation,
            token: (token != 0).then_some(token),
            read_pops: true,
        };
        self.claim_judged(actor, by, now_ms, judge)
    }

    fn claim_judged<E>(
        &self,
        actor: &str,
        by: ClaimBy<'_>,
        now_ms: u64,
        judge: &dyn Fn(&ClaimFacts) -> Result<(), E>,
    ) -> Result<Result<ActivationRecord, E>, StorageError> {
        let ClaimBy {
            pop,
            incarnation,
            token,
            read_pops,
        } = by;
        if actor.is_empty() || pop.is_empty() {
            return Err(StorageError::InvalidArgument(
                "claim needs a non-empty actor and pop".into(),
            ));
        }
        if pop.len() > POP_NAME_BYTES_MAX {
            return Err(StorageError::InvalidArgument(format!(
                "claim: POP name is {} bytes, over POP_NAME_BYTES_MAX ({POP_NAME_BYTES_MAX} bytes)",
                pop.len()
            )));
        }
        let token = token.unwrap_or_else(random_u64);
        let act_key = keys::act(actor);
        let pop_key = keys::pop(pop);
        self.kv_().transact(|tx| {
            // The activation record and the claimant's POP record in one
            // batch; the holder's POP record, when there is one, after.
            let (cur, claimant) = if read_pops {
                let mut got = tx
                    .get_many(&[act_key.clone(), pop_key.clone()])?
                    .into_iter();
                let (act, claimant) = (got.next().flatten(), got.next().flatten());
                let act = act.map(|v| ActV2::decode(&act_key, &v)).transpose()?;
                let claimant: Option<PopRecord> =
                    claimant.map(|v| decode(&pop_key, &v)).transpose()?;
                (act, claimant)
            } else {
                (Self::read_act(tx, actor)?, None)
            };
            if let Some(c) = &cur
                && c.claim_token == token
                && c.active
                && c.pop == pop
                && c.incarnation == incarnation
            {
                // Our own grant: seen after commit_unknown_result, or the
                // same claim sent again.
                return Ok(Ok(c.public()));
            }
            let current = cur.as_ref().map(ActV2::public);
            let holder = match &current {
                Some(c) if read_pops && c.active && c.pop != pop => Self::read_pop(tx, &c.pop)?,
                _ => None,
            };
            let facts = ClaimFacts {
                current: current.as_ref(),
                claimant: claimant.as_ref(),
                holder: holder.as_ref(),
            };
            if let Err(e) = judge(&facts) {
                return Ok(Err(e));
            }
            if let Some(c) = &cur
                && c.active
            {
                tx.clear(&keys::act_by_pop(&c.pop, actor));
            }
            let new = ActV2 {
                epoch: cur.as_ref().map_or(0, |c| c.epoch) + 1,
                pop: pop.to_string(),
                incarnation,
                head_seq: cur.as_ref().map_or(0, |c| c.head_seq),
                active: true,
                since_ms: now_ms,
                claim_token: token,
            };
            tx.set(&keys::act_by_pop(pop, actor), b"");
            tx.set(&act_key, &new.encode());
            Ok(Ok(new.public()))
        })
    }

    /// Marks the active record `cur` (at `act_key`) inactive and removes
    /// its `act_by_pop` entry.
    fn deactivate(tx: &mut Transaction, act_key: &[u8], actor: &str, cur: &mut ActV2) {
        cur.active = false;
        tx.clear(&keys::act_by_pop(&cur.pop, actor));
        tx.set(act_key, &cur.encode());
    }

    /// Voids `actor`'s activation if it is active at `pop` under an
    /// incarnation below `below_incarnation` (the POP registered again
    /// since), in one transaction; returns the voided epoch. A claim by
    /// the new incarnation, or by anyone else, is left alone, so a slow
    /// voiding never undoes a newer claim.
    pub fn void_activation(
        &self,
        actor: &str,
        pop: &str,
        below_incarnation: u64,
    ) -> Result<Option<u64>, StorageError> {
        let act_key = keys::act(actor);
        self.kv_().transact(|tx| {
            let Some(mut cur) = Self::read_act(tx, actor)? else {
                return Ok(None);
            };
            if !cur.active || cur.pop != pop || cur.incarnation >= below_incarnation {
                return Ok(None);
            }
            Self::deactivate(tx, &act_key, actor, &mut cur);
            Ok(Some(cur.epoch))
        })
    }

    /// Releases the claim `epoch` of `actor`: marks it inactive and removes
    /// its `act_by_pop` entry. Releasing twice is fine; a stale epoch fails
    /// with `Fenced`.
    ///
    /// The `act/<actor>` record itself stays, on purpose, for as long as the
    /// actor exists: it holds the epoch counter the fence depends on (and
    /// the head of the actor's snapshots). Deleting an inactive one would
    /// restart the count, so the next claim would reuse an epoch a paused
    /// "zombie" POP may still hold, and that zombie's commits and releases
    /// would pass the fence again. One small record per actor ever claimed
    /// is the price; it goes only together with the actor's snapshots.
    pub fn release(&self, actor: &str, epoch: u64) -> Result<(), StorageError> {
        let act_key = keys::act(actor);
        self.kv_().transact(|tx| {
            let Some(mut cur) = Self::read_act(tx, actor)? else {
                return Err(StorageError::Fenced {
                    actor: actor.to_string(),
                    epoch_given: epoch,
                    epoch_current: 0,
                });
            };
            if cur.epoch != epoch {
                return Err(StorageError::Fenced {
                    actor: actor.to_string(),
                    epoch_given: epoch,
                    epoch_current: cur.epoch,
                });
            }
            if !cur.active {
                return Ok(());
            }
            Self::deactivate(tx, &act_key, actor, &mut cur);
            Ok(())
        })
    }

    /// Every activation record (active or not), sorted by actor.
    pub fn list_activations(&self) -> Result<Vec<(String, ActivationRecord)>, StorageError> {
        self.scan_prefix(&keys::act_prefix())?
            .into_iter()
            .map(|(k, v)| {
                let a = ActV2::decode(&k, &v)?;
                Ok((keys::last_str(&k)?, a.public()))
            })
            .collect()
    }

    /// Actors active at `pop`, sorted.
    pub fn list_activations_by_pop(&self, pop: &str) -> Result<Vec<String>, StorageError> {
        self.scan_prefix(&keys::act_by_pop_prefix(pop))?
            .into_iter()
            .map(|(k, _)| keys::last_str(&k))
            .collect()
    }

    // ------------------------------------------------------------------ pops

    /// Creates or replaces a POP's membership record.
    pub fn put_pop(&self, pop: &str, rec: &PopRecord) -> Result<(), StorageError> {
        let key = keys::pop(pop);
        let val = encode(rec);
        self.kv_().transact(|tx| {
            tx.set(&key, &val);
            Ok(())
        })
    }

    /// Reads a POP's membership record.
    pub fn get_pop(&self, pop: &str) -> Result<Option<PopRecord>, StorageError> {
        self.get_record(&keys::pop(pop))
    }

    fn read_pop(tx: &mut Transaction, pop: &str) -> Result<Option<PopRecord>, StorageError> {
        let key = keys::pop(pop);
        tx.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Read-modify-write of a POP record in one transaction (e.g. lease
    /// renewal that checks the incarnation). `f` gets the current record and
    /// returns the new one (`None` deletes it); it may run more than once.
    pub fn update_pop<T>(
        &self,
        pop: &str,
        mut f: impl FnMut(Option<PopRecord>) -> Result<(Option<PopRecord>, T), StorageError>,
    ) -> Result<T, StorageError> {
        let key = keys::pop(pop);
        self.kv_().transact(|tx| {
            let cur = Self::read_pop(tx, pop)?;
            let (new, out) = f(cur)?;
            match new {
                Some(rec) => tx.set(&key, &encode(&rec)),
                None => tx.clear(&key),
            }
            Ok(out)
        })
    }

    /// Removes a POP's membership record.
    pub fn remove_pop(&self, pop: &str) -> Result<(), StorageError> {
        let key = keys::pop(pop);
        self.kv_().transact(|tx| {
            tx.clear(&key);
            Ok(())
        })
    }

    /// Every POP record, sorted by name.
    pub fn list_pops(&self) -> Result<Vec<(String, PopRecord)>, StorageError> {
        self.list_named(&keys::pop_prefix())
    }

    // ------------------------------------------------------------- snapshots

    fn read_manifest(
        tx: &mut Transaction,
        actor: &str,
        seq: u64,
    ) -> Result<Option<ManifestV2>, StorageError> {
        let parts = tx.get_prefix(&keys::manifest(actor, seq))?;
        Self::decode_manifest(actor, seq, &parts)
    }

    /// The manifest of `actor` at `seq` from its parts as read (`None`
    /// when there are none), validated as [`Store::read_manifest`] says.
    fn decode_manifest(
        actor: &str,
        seq: u64,
        parts: &[KeyValue],
    ) -> Result<Option<ManifestV2>, StorageError> {
        let prefix = keys::manifest(actor, seq);
        if parts.is_empty() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        for (i, (k, v)) in parts.iter().enumerate() {
            if *k != keys::manifest_part(actor, seq, i as u64) {
                return Err(StorageError::corrupt(
                    k,
                    format!("manifest part {i} is missing or misplaced"),
                ));
            }
            bytes.extend_from_slice(v);
        }
        let m: ManifestV2 = decode_as(FORMAT_V3, &prefix, &bytes)?;
        if m.actor != actor || m.seq != seq {
            return Err(StorageError::corrupt(
                &prefix,
                format!(
                    "the manifest here belongs to actor {:?} version {}; it was moved here from another actor or version",
                    m.actor, m.seq
                ),
            ));
        }
        Ok(Some(m))
    }

    /// Writes `m` under its own actor and version.
    fn write_manifest(tx: &mut Transaction, m: &ManifestV2) {
        let bytes = encode_as(FORMAT_V3, m);
        for (i, part) in bytes.chunks(VALUE_CHUNK_BYTES).enumerate() {
            tx.set(&keys::manifest_part(&m.actor, m.seq, i as u64), part);
        }
    }

    fn prepare<'a>(&self, req: &'a CommitRequest) -> Result<Prepared<'a>, StorageError> {
        let bad = |msg: String| {
            Err(StorageError::InvalidArgument(format!(
                "commit for actor {:?}: {msg}",
                req.actor
            )))
        };
        if req.actor.is_empty() {
            return bad("empty actor name".into());
        }
        if req.epoch == 0 {
            return bad("epoch 0 is never a valid claim".into());
        }
        if req.extra.len() > EXTRA_RECORDS_PER_COMMIT_MAX {
            return bad(format!(
                "{} extra records, over the limit of {EXTRA_RECORDS_PER_COMMIT_MAX} per commit; commit more often",
                req.extra.len()
            ));
        }
        for (name, v) in &req.extra {
            if name.is_empty() || name.len() > EXTRA_NAME_BYTES_MAX || v.len() > EXTRA_BYTES_MAX {
                return bad(format!(
                    "extra record {:?} must have a name of 1 to {EXTRA_NAME_BYTES_MAX} bytes (has {}) and at most {EXTRA_BYTES_MAX} bytes of value (has {})",
                    name.chars().take(64).collect::<String>(),
                    name.len(),
                    v.len()
                ));
            }
        }
        if req.due.len() > DUE_CHANGES_PER_COMMIT_MAX {
            return bad(format!(
                "{} alarm due-index changes, over the limit of {DUE_CHANGES_PER_COMMIT_MAX} per commit",
                req.due.len()
            ));
        }
        if req.events.len() > EVENTS_PER_COMMIT_MAX {
            return bad(format!(
                "{} events, over the limit of {EVENTS_PER_COMMIT_MAX} per commit",
                req.events.len()
            ));
        }
        for e in &req.events {
            if e.topic.is_empty() || e.topic.len() > TOPIC_BYTES_MAX {
                return bad(format!(
                    "event topic must be 1 to {TOPIC_BYTES_MAX} bytes (has {})",
                    e.topic.len()
                ));
            }
            if e.payload.len() > EVENT_BYTES_MAX {
                return bad(format!(
                    "event on topic {:?} has {} bytes, over the limit of {EVENT_BYTES_MAX}",
                    e.topic,
                    e.payload.len()
                ));
            }
            if e.seq == 0 {
                return bad(format!(
                    "event on topic {:?} has seq 0; seqs start at 1",
                    e.topic
                ));
            }
        }
        let mut dedup: BTreeMap<(u32, u32), &[u8]> = BTreeMap::new();
        for (m, mem) in req.memories.iter().enumerate() {
            let npages = pages_for(mem.len_bytes);
            for (p, data) in &mem.changed_pages {
                if *p as usize >= npages {
                    return bad(format!(
                        "memory {m}: page {p} is beyond its length of {} bytes",
                        mem.len_bytes
                    ));
                }
                if data.len() != PAGE_SIZE {
                    return bad(format!(
                        "memory {m}: page {p} has {} bytes, expected {PAGE_SIZE}",
                        data.len()
                    ));
                }
                dedup.insert((m as u32, *p), data);
            }
        }
        // The manifest holds 8 bytes per page of every memory: refuse a
        // length whose manifest alone breaks the budget before allocating it.
        let manifest_pages: usize = req
            .memories
            .iter()
            .map(|mem| pages_for(mem.len_bytes))
            .sum();
        if manifest_pages.saturating_mul(8) > GROUP_TXN_BYTES_MAX {
            return bad(format!(
                "memories of {manifest_pages} pages in all need a manifest over GROUP_TXN_BYTES_MAX ({GROUP_TXN_BYTES_MAX} bytes)"
            ));
        }
        let mut page_bytes = 0;
        let pages: Vec<(u32, u32, Option<Vec<u8>>)> = dedup
            .into_iter()
            .map(|((m, p), data)| {
                let v = (!is_zero(data)).then(|| {
                    let packed = pack_page(
                        data,
                        &PageBinding {
                            actor: &req.actor,
                            memory: m,
                            page: p,
                            seq: req.expected_head_seq + 1,
                        },
                        self.inner.page_key.as_ref(),
                    );
                    encode_as(
                        FORMAT_V3,
                        &PageV2 {
                            epoch: req.epoch,
                            encoding: packed.encoding,
                            image_crc: packed.image_crc,
                            data: packed.data,
                        },
                    )
                });
                page_bytes += v.as_ref().map_or(0, |v| v.len() + 64);
                (m, p, v)
            })
            .collect();
        let mut extras: Vec<(Vec<u8>, Option<Vec<u8>>)> = req
            .extra
            .iter()
            .map(|(name, v)| {
                let value = (!v.is_empty()).then(|| encode(&ExtraV1 { data: v.clone() }));
                (keys::extra(&req.actor, name), value)
            })
            .collect();
        extras.extend(req.due.iter().map(|d| {
            let value = d.set.then(|| encode(&ExtraV1 { data: Vec::new() }));
            (keys::due(d.at_ms, &req.actor, d.id), value)
        }));
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &req.events {
            extras.push((
                keys::event(&req.actor, &e.topic, e.seq),
                Some(encode(&ExtraV1 {
                    data: e.payload.clone(),
                })),
            ));
            let n = newest.entry(&e.topic).or_default();
            *n = (*n).max(e.seq);
        }
        let range_clears: Vec<(Vec<u8>, Vec<u8>)> = newest
            .into_iter()
            .filter(|(_, seq)| *seq > EVENTS_KEPT_PER_TOPIC)
            .map(|(topic, seq)| {
                (
                    keys::event(&req.actor, topic, 0),
                    keys::event(&req.actor, topic, seq - EVENTS_KEPT_PER_TOPIC + 1),
                )
            })
            .collect();
        let token = random_u64();
        let (page_set_bytes, side_bytes, read_bytes) = Self::commit_bytes_bound(
            req,
            token,
            &pages,
            &extras,
            &range_clears,
            self.kv_().key_prefix_len(),
        );
        if side_bytes > GROUP_TXN_BYTES_MAX {
            return bad(format!(
                "its records other than pages (manifest, {} extra records, page-version clears, activation record) need up to {side_bytes} bytes in one transaction, over GROUP_TXN_BYTES_MAX ({GROUP_TXN_BYTES_MAX} bytes); commit fewer or smaller extra records at a time",
                req.extra.len()
            ));
        }
        Ok(Prepared {
            req,
            token,
            inline_clears_max: self.inner.clears.inline,
            pages,
            page_bytes,
            extras,
            range_clears,
            side_bytes,
            txn_bytes: page_set_bytes + side_bytes + read_bytes,
        })
    }

    /// An upper bound of the size (as FoundationDB counts it, see
    /// [`crate::kv::cost`]; `prefix` is the backend's key prefix length)
    /// of a request's commit transaction: `(page sets, the rest of what
    /// [`Store::apply_commit`] writes, the conflict ranges of what
    /// [`Store::read_commit_facts`] reads)`. Page sets are the non-zero
    /// pages (written by the staging transactions instead when the commit
    /// is staged).
    fn commit_bytes_bound(
        req: &CommitRequest,
        token: u64,
        pages: &[(u32, u32, Option<Vec<u8>>)],
        extras: &[(Vec<u8>, Option<Vec<u8>>)],
        range_clears: &[(Vec<u8>, Vec<u8>)],
        prefix: usize,
    ) -> (usize, usize, usize) {
        let actor = &req.actor;
        let head = req.expected_head_seq;
        let seq = head + 1;
        let k = |key: &[u8]| prefix + key.len();
        let clear_prefix = |p: &[u8]| cost::clear_range(k(p), k(p) + 1);
        let mut page_sets = 0;
        let mut side = 0;
        let mut clear_max = 0;
        for (m, pg, v) in pages {
            // The key of the new version; the version it supersedes has a
            // seq <= head, so a key no longer (integers grow with value).
            let key = k(&keys::page(actor, *m, *pg, seq));
            if let Some(v) = v {
                page_sets += cost::set(key, v.len());
            }
            clear_max = clear_max.max(cost::clear(key));
        }
        // Clears of the superseded versions (at most one per page, and none
        // past SUPERSEDED_CLEARS_INLINE_MAX).
        side += clear_max * pages.len().min(SUPERSEDED_CLEARS_INLINE_MAX) as u64;
        // Pages beyond a memory's new length, and memories that are gone:
        // one range clear each.
        for (m, mem) in req.memories.iter().enumerate() {
            let n = u32::try_from(pages_for(mem.len_bytes)).unwrap_or(u32::MAX);
            side += cost::clear_range(
                k(&keys::page(actor, m as u32, n, 0)),
                k(&keys::page_memory_prefix(actor, m as u32)) + 1,
            );
        }
        side += cost::clear_range(
            k(&keys::page_memory_prefix(actor, req.memories.len() as u32)),
            k(&keys::page_prefix(actor)) + 1,
        );
        // The new manifest (rkyv's size does not depend on the integers'
        // values, so a zeroed manifest of the same shape is exact), its
        // part keys, and the clear of the previous one.
        let manifest = encode_as(
            FORMAT_V3,
            &ManifestV2 {
                actor: req.actor.clone(),
                seq: req.expected_head_seq + 1,
                epoch: req.epoch,
                token,
                component_digest: req.meta.component_digest.clone(),
                engine_version: req.meta.engine_version.clone(),
                globals: req.meta.globals.clone(),
                memories: req
                    .memories
                    .iter()
                    .map(|mem| MemMapV1 {
                        len_bytes: mem.len_bytes,
                        pages: vec![0; pages_for(mem.len_bytes)],
                    })
                    .collect(),
            },
        )
        .len();
        let parts = manifest.div_ceil(VALUE_CHUNK_BYTES).max(1);
        let part_key = k(&keys::manifest_part(actor, seq, parts as u64));
        side += parts as u64 * cost::set(part_key, 0) + manifest as u64;
        side += clear_prefix(&keys::manifest(actor, head));
        // The stage token's clear (staged commits only; counted always).
        side += clear_prefix(&keys::stage_token(actor, seq, req.epoch, token));
        for (key, value) in extras {
            side += match value {
                Some(v) => cost::set(k(key), v.len()),
                None => cost::clear(k(key)),
            };
        }
        for (begin, end) in range_clears {
            side += cost::clear_range(k(begin), k(end));
        }
        side += cost::set(k(&keys::act(actor)), act_value_bytes_bound());
        // Reads: the activation record, the manifests at the head and next.
        let reads = cost::get(k(&keys::act(actor)))
            + cost::range(
                k(&keys::manifest(actor, seq)),
                k(&keys::manifest(actor, seq)) + 1,
                None,
            )
            + cost::range(
                k(&keys::manifest(actor, head)),
                k(&keys::manifest(actor, head)) + 1,
                None,
            );
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        (size(page_sets), size(side), size(reads))
    }

    /// Reads what the commits of `group` (distinct actors) check and build
    /// on, in two batched reads whatever the number of requests (two round
    /// trips on FoundationDB): every activation record, then every
    /// manifest needed (the head each request builds on, if `with_prev`,
    /// and the one at its next seq where the head already is there, which
    /// may be its own commit whose result was unknown). The outer error
    /// fails the transaction (a retryable read failure); an inner one is a
    /// request's own unreadable record.
    fn read_commit_facts(
        tx: &mut Transaction,
        group: &[&Prepared<'_>],
        with_prev: bool,
    ) -> Result<Vec<Result<CommitFacts, StorageError>>, StorageError> {
        // Everything in one round trip: each actor's activation record (a
        // range holding exactly its key) and the manifests the checks may
        // need, read before knowing whether they will be: the next one
        // (ours, if an earlier attempt's commit landed) and the previous
        // one. At WAN distance from the store this is a durable turn's
        // largest cost (the placement model measured 3 round trips per
        // commit before, 2 now).
        let mut ranges = Vec::new();
        let mut plans = Vec::with_capacity(group.len());
        for p in group {
            let req = p.req;
            let key = keys::act(&req.actor);
            ranges.push(RangeRead::exact(&key));
            let act_at = ranges.len() - 1;
            ranges.push(RangeRead::prefix(&keys::manifest(
                &req.actor,
                req.expected_head_seq + 1,
            )));
            let next_at = ranges.len() - 1;
            let prev_at = (with_prev && req.expected_head_seq > 0).then(|| {
                ranges.push(RangeRead::prefix(&keys::manifest(
                    &req.actor,
                    req.expected_head_seq,
                )));
                ranges.len() - 1
            });
            plans.push((key, req.expected_head_seq + 1, act_at, next_at, prev_at));
        }
        let mut replies: Vec<Option<Vec<KeyValue>>> =
            tx.get_ranges(&ranges)?.into_iter().map(Some).collect();
        let plans: Vec<_> = plans
            .into_iter()
            .map(|(key, next_seq, act_at, next_at, prev_at)| {
                let kvs = replies[act_at].take().expect("each reply is used once");
                let act = Self::act_of(&key, kvs)?;
                let next = act
                    .as_ref()
                    .is_some_and(|a| a.head_seq == next_seq)
                    .then_some(next_at);
                let prev = prev_at.filter(|_| act.is_some());
                Ok((act, next, prev))
            })
            .collect();
        let mut manifest = |actor: &str, seq: u64, at: Option<usize>| match at {
            None => Ok(None),
            Some(i) => {
                let parts = replies[i].take().expect("each reply is used once");
                Self::decode_manifest(actor, seq, &parts)
            }
        };
        Ok(group
            .iter()
            .zip(plans)
            .map(|(p, plan)| {
                let (act, next, prev) = plan?;
                let req = p.req;
                Ok(CommitFacts {
                    act,
                    next: manifest(&req.actor, req.expected_head_seq + 1, next)?,
                    prev: manifest(&req.actor, req.expected_head_seq, prev)?,
                })
            })
            .collect())
    }

    /// [`Store::read_commit_facts`] of one request.
    fn read_facts_of(
        tx: &mut Transaction,
        p: &Prepared<'_>,
        with_prev: bool,
    ) -> Result<CommitFacts, StorageError> {
        let mut facts = Self::read_commit_facts(tx, &[p], with_prev)?;
        assert_eq!(facts.len(), 1, "one result per request");
        facts.pop().expect("one result")
    }

    /// Checks the fence for `p` on what its transaction read. Ok(Some(seq))
    /// means our own earlier commit already made it (after
    /// commit_unknown_result).
    fn check_fence(
        facts: &CommitFacts,
        p: &Prepared<'_>,
    ) -> Result<(ActV2, Option<u64>), StorageError> {
        let req = p.req;
        let Some(act) = facts.act.clone() else {
            return Err(StorageError::Fenced {
                actor: req.actor.clone(),
                epoch_given: req.epoch,
                epoch_current: 0,
            });
        };
        let next = req.expected_head_seq + 1;
        if act.head_seq == next
            && let Some(m) = &facts.next
            && m.token == p.token
        {
            return Ok((act, Some(next)));
        }
        if (act.epoch != req.epoch || !act.active) && !crate::plant::skip_fence() {
            return Err(StorageError::Fenced {
                actor: req.actor.clone(),
                epoch_given: req.epoch,
                epoch_current: act.epoch,
            });
        }
        if act.head_seq != req.expected_head_seq && !crate::plant::skip_fence() {
            return Err(StorageError::HeadMismatch {
                actor: req.actor.clone(),
                expected: req.expected_head_seq,
                current: act.head_seq,
            });
        }
        Ok((act, None))
    }

    /// The fenced manifest transaction body, on what the transaction read
    /// ([`Store::read_commit_facts`], with the previous manifest). It reads
    /// nothing more, and checks everything before the first write, so an
    /// error leaves `tx` untouched.
    fn apply_commit(
        tx: &mut Transaction,
        p: &Prepared<'_>,
        staged: bool,
        facts: CommitFacts,
    ) -> Result<u64, StorageError> {
        let req = p.req;
        let (mut act, done) = Self::check_fence(&facts, p)?;
        if let Some(seq) = done {
            return Ok(seq);
        }
        let size_before = tx.size();
        let prev = if req.expected_head_seq == 0 {
            None
        } else {
            Some(facts.prev.ok_or_else(|| {
                StorageError::corrupt(
                    &keys::manifest(&req.actor, req.expected_head_seq),
                    "the head manifest is missing",
                )
            })?)
        };
        let seq = req.expected_head_seq + 1;
        let mut memories: Vec<MemMapV1> = req
            .memories
            .iter()
            .enumerate()
            .map(|(m, mem)| {
                let n = pages_for(mem.len_bytes);
                let mut pages = prev
                    .as_ref()
                    .and_then(|pm| pm.memories.get(m))
                    .map(|mm| mm.pages.clone())
                    .unwrap_or_default();
                pages.resize(n, 0);
                MemMapV1 {
                    len_bytes: mem.len_bytes,
                    pages,
                }
            })
            .collect();
        for (m, pg, v) in &p.pages {
            memories[*m as usize].pages[*pg as usize] = if v.is_some() { seq } else { 0 };
            if !staged && let Some(v) = v {
                tx.set(&keys::page(&req.actor, *m, *pg, seq), v);
            }
        }
        // Inline garbage collection: only the head version is kept, so the
        // page versions this commit supersedes and the previous manifest
        // go in the same transaction (a clear per changed page). Nothing
        // writes at a seq <= head any more, so this cannot race; readers
        // of the old head hold a consistent snapshot.
        // Pages beyond a memory's new length, and memories that are gone,
        // go by range clears: a shrinking memory costs two keys, not one
        // clear per page. Nothing valid lives there: this commit's pages
        // are all below the new lengths, and no commit stages at a seq
        // above this one before it is the head.
        // A rewrite of more than SUPERSEDED_CLEARS_INLINE_MAX pages leaves
        // the page versions it supersedes, and the previous manifest that
        // names them, to garbage collection: their clears would make this
        // transaction huge (about four times the key per clear, as
        // FoundationDB counts it).
        if let Some(pm) = &prev {
            let superseded: Vec<(u32, u32, u64)> = pm
                .memories
                .iter()
                .zip(&memories)
                .enumerate()
                .flat_map(|(m, (mm, nm))| {
                    mm.pages
                        .iter()
                        .zip(&nm.pages)
                        .enumerate()
                        .filter(|(_, (s, now))| **s != 0 && *now != *s)
                        .map(move |(i, (s, _))| (m as u32, i as u32, *s))
                })
                .collect();
            let inline = superseded.len() <= p.inline_clears_max;
            if inline {
                for (m, i, s) in superseded {
                    tx.clear(&keys::page(&req.actor, m, i, s));
                }
            }
            for (m, mm) in pm.memories.iter().enumerate() {
                let Some(nm) = memories.get(m) else { continue };
                if mm.pages.iter().skip(nm.pages.len()).any(|&s| s != 0) {
                    let n = u32::try_from(nm.pages.len()).expect("prepare bounds the page count");
                    tx.clear_range(
                        &keys::page(&req.actor, m as u32, n, 0),
                        &crate::tuple::range_end(&keys::page_memory_prefix(&req.actor, m as u32)),
                    );
                }
            }
            let gone = pm.memories.iter().skip(memories.len());
            if gone.flat_map(|mm| &mm.pages).any(|&s| s != 0) {
                tx.clear_range(
                    &keys::page_memory_prefix(&req.actor, memories.len() as u32),
                    &crate::tuple::range_end(&keys::page_prefix(&req.actor)),
                );
            }
            if inline {
                tx.clear_prefix(&keys::manifest(&req.actor, req.expected_head_seq));
            }
        }
        let manifest = ManifestV2 {
            actor: req.actor.clone(),
            seq,
            epoch: req.epoch,
            token: p.token,
            component_digest: req.meta.component_digest.clone(),
            engine_version: req.meta.engine_version.clone(),
            globals: req.meta.globals.clone(),
            memories,
        };
        Self::write_manifest(tx, &manifest);
        if staged {
            tx.clear_prefix(&keys::stage_token(&req.actor, seq, req.epoch, p.token));
        }
        for (key, value) in &p.extras {
            match value {
                Some(v) => tx.set(key, v),
                None => tx.clear(key),
            }
        }
        for (begin, end) in &p.range_clears {
            tx.clear_range(begin, end);
        }
        act.head_seq = seq;
        tx.set(&keys::act(&req.actor), &act.encode());
        let written = tx.size() - size_before;
        assert!(
            written <= p.apply_bytes(staged) as u64,
            "commit of {:?} wrote {written} bytes, over its bound of {} bytes: the group budget would be wrong",
            req.actor,
            p.apply_bytes(staged)
        );
        Ok(seq)
    }

    /// Commits one snapshot (one turn) behind the epoch fence: fails with
    /// `Fenced` unless `req.epoch` is the current, active claim, and with
    /// `HeadMismatch` unless the head is `req.expected_head_seq`. Returns
    /// the new head (`expected_head_seq + 1`). Only changed pages are
    /// written; commits with more than [`STAGE_TXN_BYTES_MAX`] of pages, or
    /// whose single transaction could exceed [`GROUP_TXN_BYTES_MAX`], are
    /// staged first. A request whose records other than pages alone could
    /// exceed [`GROUP_TXN_BYTES_MAX`] is refused with `InvalidArgument`.
    /// Never applies twice, even after `commit_unknown_result`.
    pub fn commit_snapshot(&self, req: &CommitRequest) -> Result<u64, StorageError> {
        let p = self.prepare(req)?;
        if p.staged() {
            self.commit_staged(&p)
        } else {
            self.kv_().transact(|tx| {
                let facts = Self::read_facts_of(tx, &p, true)?;
                Self::apply_commit(tx, &p, false, facts)
            })
        }
    }

    fn commit_staged(&self, p: &Prepared<'_>) -> Result<u64, StorageError> {
        if let Some(done) = self.stage_parts(p)? {
            return Ok(done);
        }
        self.kv_().transact(|tx| {
            let facts = Self::read_facts_of(tx, p, true)?;
            Self::apply_commit(tx, p, true, facts)
        })
    }

    /// Writes the pages of a staged commit in fenced transactions of at
    /// most about [`STAGE_TXN_BYTES_MAX`]. `Some(seq)` if the whole commit
    /// turned out to be already done.
    fn stage_parts(&self, p: &Prepared<'_>) -> Result<Option<u64>, StorageError> {
        let req = p.req;
        let seq = req.expected_head_seq + 1;
        // Split the non-zero pages into transactions under the byte limit
        // (page keys and values, plus 8 bytes per page of stage marker).
        let mut groups: Vec<Vec<(u32, u32, &Vec<u8>)>> = vec![Vec::new()];
        let mut bytes = 0;
        for (m, pg, v) in &p.pages {
            let Some(v) = v else { continue };
            let cost = keys::page(&req.actor, *m, *pg, seq).len() + v.len() + 8;
            if bytes + cost > STAGE_TXN_BYTES_MAX && !groups.last().is_some_and(Vec::is_empty) {
                groups.push(Vec::new());
                bytes = 0;
            }
            bytes += cost;
            groups.last_mut().expect("non-empty").push((*m, *pg, v));
        }
        for (part, group) in groups.iter().enumerate() {
            let marker = encode(&StageMarkerV1 {
                epoch: req.epoch,
                pages: group.iter().map(|(m, pg, _)| (*m, *pg)).collect(),
            });
            let outcome = self.kv_().transact(|tx| {
                let facts = Self::read_facts_of(tx, p, false)?;
                if let (_, Some(done)) = Self::check_fence(&facts, p)? {
                    return Ok(StageOutcome::AlreadyCommitted(done));
                }
                tx.set(
                    &keys::stage_marker(&req.actor, seq, req.epoch, p.token, part as u64),
                    &marker,
                );
                for (m, pg, v) in group {
                    tx.set(&keys::page(&req.actor, *m, *pg, seq), v);
                }
                Ok(StageOutcome::Staged)
            })?;
            if let StageOutcome::AlreadyCommitted(done) = outcome {
                return Ok(Some(done));
            }
        }
        Ok(None)
    }

    /// Test hook: runs only the staging transactions of a (big) commit, as
    /// if the process died before the manifest transaction.
    #[cfg(test)]
    pub(crate) fn stage_without_manifest(&self, req: &CommitRequest) -> Result<(), StorageError> {
        let p = self.prepare(req)?;
        self.stage_parts(&p).map(|_| ())
    }

    /// Group commit: commits many requests (typically of different actors)
    /// in as few transactions as possible: consecutive small requests of
    /// distinct actors share one transaction of up to about
    /// [`STAGE_TXN_BYTES_MAX`] of pages and at most [`GROUP_TXN_BYTES_MAX`]
    /// of everything it writes (pages, manifests, `extra` records, clears,
    /// activation records, each counted with an upper bound before the
    /// transaction runs); a second request for the same actor starts a new
    /// transaction. Big ones are staged alone. Each request is fenced and
    /// checked on its own: a fenced, mismatched or oversized request (see
    /// [`Store::commit_snapshot`]) gets its error without failing the
    /// others. Results are in request order.
    pub fn commit_batch(&self, reqs: &[CommitRequest]) -> Vec<Result<u64, StorageError>> {
        let mut results: Vec<Option<Result<u64, StorageError>>> = vec![None; reqs.len()];
        let mut group: Vec<(usize, Prepared<'_>)> = Vec::new();
        let mut group_bytes = 0;
        let mut group_txn_bytes = 0;
        for (i, req) in reqs.iter().enumerate() {
            let p = match self.prepare(req) {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            let staged = p.staged();
            // One request per actor per transaction: a chained second
            // commit would hide the first one's token from the
            // commit_unknown_result check.
            let repeat = group.iter().any(|(_, g)| g.req.actor == req.actor);
            if staged
                || repeat
                || group_bytes + p.page_bytes > STAGE_TXN_BYTES_MAX
                || group_txn_bytes + p.txn_bytes > GROUP_TXN_BYTES_MAX
            {
                self.flush_group(std::mem::take(&mut group), &mut results);
                group_bytes = 0;
                group_txn_bytes = 0;
            }
            if staged {
                results[i] = Some(self.commit_staged(&p));
            } else {
                group_bytes += p.page_bytes;
                group_txn_bytes += p.txn_bytes;
                group.push((i, p));
            }
        }
        self.flush_group(group, &mut results);
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }

    fn flush_group(
        &self,
        group: Vec<(usize, Prepared<'_>)>,
        results: &mut [Option<Result<u64, StorageError>>],
    ) {
        if group.is_empty() {
            return;
        }
        let bound: usize = group.iter().map(|(_, p)| p.txn_bytes).sum();
        let actors: HashSet<&str> = group.iter().map(|(_, p)| p.req.actor.as_str()).collect();
        assert_eq!(
            actors.len(),
            group.len(),
            "a group holds one request per actor (their reads are batched before any write)"
        );
        assert!(
            bound <= GROUP_TXN_BYTES_MAX,
            "a group of {} requests is bounded by {bound} bytes, over GROUP_TXN_BYTES_MAX",
            group.len()
        );
        let prepared: Vec<&Prepared<'_>> = group.iter().map(|(_, p)| p).collect();
        let r = self.kv_().transact(|tx| {
            // Every request's reads in two batches, then only writes: a
            // constant number of round trips for the whole group.
            let facts = Self::read_commit_facts(tx, &prepared, true)?;
            let out: Vec<Result<u64, StorageError>> = prepared
                .iter()
                .zip(facts)
                .map(|(p, f)| f.and_then(|f| Self::apply_commit(tx, p, false, f)))
                .collect();
            assert!(
                tx.size() <= bound as u64,
                "a group commit of {} requests is {} bytes, over its bound of {bound}",
                prepared.len(),
                tx.size()
            );
            Ok(out)
        });
        match r {
            Ok(out) => {
                for ((i, _), r) in group.iter().zip(out) {
                    results[*i] = Some(r);
                }
            }
            Err(e) => {
                for (i, _) in &group {
                    results[*i] = Some(Err(e.clone()));
                }
            }
        }
    }

    /// Loads the head snapshot of `actor`: `None` if it has none. Every
    /// value is validated (crc32, rkyv/bytecheck); any damage or missing
    /// piece is `Corrupt` with the key, never garbage.
    pub fn load_snapshot(&self, actor: &str) -> Result<Option<LoadedSnapshot>, StorageError> {
        Ok(self.load(actor, true)?.map(|(h, memories)| LoadedSnapshot {
            seq: h.seq,
            epoch: h.epoch,
            meta: h.meta,
            memories,
            extra: h.extra,
        }))
    }

    /// The head snapshot of `actor` without its memory pages (`None` if it
    /// has none): what a POP that still holds the images of that very
    /// snapshot reads to reactivate the actor. Validated as
    /// [`Store::load_snapshot`] validates.
    pub fn load_snapshot_head(&self, actor: &str) -> Result<Option<SnapshotHead>, StorageError> {
        Ok(self.load(actor, false)?.map(|(h, _)| h))
    }

    /// The head snapshot, with its memory images if `pages` (else none).
    #[allow(clippy::type_complexity)]
    fn load(
        &self,
        actor: &str,
        pages: bool,
    ) -> Result<Option<(SnapshotHead, Vec<Vec<u8>>)>, StorageError> {
        let page_key = self.inner.page_key.as_ref();
        self.kv_().read(|tx| {
            // The activation record and the side records at once.
            let act_key = keys::act(actor);
            let mut first = tx.get_ranges(&[
                RangeRead::exact(&act_key),
                RangeRead::prefix(&keys::extra_prefix(actor)),
            ])?;
            let extra_kvs = first.pop().expect("two replies");
            let act_kvs = first.pop().expect("two replies");
            let Some(act) = Self::act_of(&act_key, act_kvs)? else {
                return Ok(None);
            };
            if act.head_seq == 0 {
                return Ok(None);
            }
            let m = Self::read_manifest(tx, actor, act.head_seq)?.ok_or_else(|| {
                StorageError::corrupt(
                    &keys::manifest(actor, act.head_seq),
                    "the head manifest is missing",
                )
            })?;
            // Every stored page of every memory, read in batches of
            // RESTORE_PAGES_PER_READ_MAX (one round trip each on
            // FoundationDB): a restore costs a constant number of round
            // trips up to that many pages, not one per page.
            let mut wanted = Vec::new();
            for (mi, mm) in m.memories.iter().enumerate() {
                for (pi, &s) in mm.pages.iter().enumerate() {
                    if s != 0 && pages {
                        wanted.push(keys::page(actor, mi as u32, pi as u32, s));
                    }
                }
            }
            let mut values = Vec::with_capacity(wanted.len());
            for batch in wanted.chunks(RESTORE_PAGES_PER_READ_MAX) {
                values.extend(tx.get_many(batch)?);
            }
            let mut values = wanted.into_iter().zip(values);
            let mut memories = Vec::with_capacity(m.memories.len());
            for (mi, mm) in m.memories.iter().enumerate() {
                let len = usize::try_from(mm.len_bytes).map_err(|_| {
                    StorageError::corrupt(&keys::manifest(actor, act.head_seq), "memory too large")
                })?;
                if mm.pages.len() != pages_for(mm.len_bytes) {
                    return Err(StorageError::corrupt(
                        &keys::manifest(actor, act.head_seq),
                        format!(
                            "memory {mi}: {} page entries for {len} bytes",
                            mm.pages.len()
                        ),
                    ));
                }
                if !pages {
                    continue;
                }
                let mut image = vec![0u8; len];
                for (pi, &s) in mm.pages.iter().enumerate() {
                    if s == 0 {
                        continue;
                    }
                    let (key, value) = values.next().expect("one value per stored page");
                    assert_eq!(
                        key,
                        keys::page(actor, mi as u32, pi as u32, s),
                        "page values come back in the order they were asked for"
                    );
                    let Some(v) = value else {
                        return Err(StorageError::corrupt(
                            &key,
                            "page referenced by the head manifest is missing",
                        ));
                    };
                    let off = pi * PAGE_SIZE;
                    let n = PAGE_SIZE.min(len - off);
                    with_archived::<ArchivedPageV2, ()>(FORMAT_V3, &key, &v, |page| {
                        let (encoding, crc) = (page.encoding, page.image_crc.to_native());
                        let data = page.data.as_slice();
                        let at = PageBinding {
                            actor,
                            memory: mi as u32,
                            page: pi as u32,
                            seq: s,
                        };
                        if n == PAGE_SIZE {
                            unpack_page(
                                &key,
                                encoding,
                                crc,
                                data,
                                &mut image[off..off + n],
                                &at,
                                page_key,
                            )
                        } else {
                            // The last page of a memory whose length is
                            // not a multiple of the page size.
                            let mut full = vec![0u8; PAGE_SIZE];
                            unpack_page(&key, encoding, crc, data, &mut full, &at, page_key)?;
                            image[off..off + n].copy_from_slice(&full[..n]);
                            Ok(())
                        }
                    })?;
                }
                memories.push(image);
            }
            let extra = extra_kvs
                .into_iter()
                .map(|(k, v)| {
                    let e: ExtraV1 = decode(&k, &v)?;
                    Ok((keys::last_str(&k)?, e.data))
                })
                .collect::<Result<Vec<_>, StorageError>>()?;
            let head = SnapshotHead {
                seq: act.head_seq,
                epoch: m.epoch,
                memory_lens: m.memories.iter().map(|mm| mm.len_bytes).collect(),
                meta: SnapshotMeta {
                    component_digest: m.component_digest,
                    engine_version: m.engine_version,
                    globals: m.globals,
                },
                extra,
            };
            Ok(Some((head, memories)))
        })
    }

    /// Alarms due before `until_ms`, earliest first, at most `limit` (and
    /// at most [`OUTBOX_LIST_MAX`]). An entry stays until a commit of its
    /// actor removes it (the turn that handled the alarm, or one that
    /// cancelled it), or [`Store::clear_due`].
    pub fn list_due(&self, until_ms: u64, limit: usize) -> Result<Vec<DueAlarm>, StorageError> {
        let (begin, end) = keys::due_until(until_ms);
        let limit = limit.min(OUTBOX_LIST_MAX);
        self.kv_()
            .read(|tx| tx.get_range(&begin, &end, Some(limit), false))?
            .into_iter()
            .map(|(k, _)| {
                let (at_ms, actor, id) = keys::due_parts(&k)?;
                Ok(DueAlarm { at_ms, actor, id })
            })
            .collect()
    }

    /// Removes one due-index entry whose actor can no longer be woken (its
    /// type is gone).
    pub fn clear_due(&self, due: &DueAlarm) -> Result<(), StorageError> {
        let key = keys::due(due.at_ms, &due.actor, due.id);
        self.kv_().transact(|tx| {
            tx.clear(&key);
            Ok(())
        })
    }

    /// Events of `actor`'s `topic` with a seq above `after`, oldest first,
    /// at most `limit` (and at most [`OUTBOX_LIST_MAX`]).
    pub fn read_events(
        &self,
        actor: &str,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StorageError> {
        let begin = keys::event(actor, topic, after.saturating_add(1));
        let end = crate::tuple::range_end(&keys::event_topic_prefix(actor, topic));
        let limit = limit.min(OUTBOX_LIST_MAX);
        self.kv_()
            .read(|tx| tx.get_range(&begin, &end, Some(limit), false))?
            .into_iter()
            .map(|(k, v)| {
                let e: ExtraV1 = decode(&k, &v)?;
                Ok(EventRecord {
                    topic: topic.to_string(),
                    seq: keys::last_int(&k)?,
                    payload: e.data,
                })
            })
            .collect()
    }

    /// The newest event seq of `actor`'s `topic` (0 if none is kept).
    pub fn last_event_seq(&self, actor: &str, topic: &str) -> Result<u64, StorageError> {
        let begin = keys::event_topic_prefix(actor, topic);
        let end = crate::tuple::range_end(&begin);
        match self
            .kv_()
            .read(|tx| tx.get_range(&begin, &end, Some(1), true))?
            .first()
        {
            Some((k, _)) => keys::last_int(k),
            None => Ok(0),
        }
    }

    /// Whether [`Store::gc_snapshots`] has anything to do for `actor`: staged
    /// pages left by an unfinished commit, or manifests older than the head.
    /// One read-only transaction, so callers can skip the write transaction
    /// of a collection in the common case where commits left nothing behind.
    pub fn needs_gc(&self, actor: &str) -> Result<bool, StorageError> {
        self.kv_().read(|tx| {
            if !tx
                .get_range(
                    &keys::stage_prefix(actor),
                    &crate::tuple::range_end(&keys::stage_prefix(actor)),
                    Some(1),
                    false,
                )?
                .is_empty()
            {
                return Ok(true);
            }
            let Some(act) = Self::read_act(tx, actor)? else {
                return Ok(false);
            };
            let older = tx.get_range(
                &keys::manifest(actor, 0),
                &keys::manifest(actor, act.head_seq),
                Some(1),
                false,
            )?;
            Ok(!older.is_empty())
        })
    }

    /// Removes what the head snapshot no longer needs. Commits already drop
    /// the versions they supersede; this sweeps the rest: older manifests,
    /// pages they referenced that the head does not, and pages of staged
    /// commits that were abandoned (by an older epoch, or superseded).
    /// A staged commit still in flight (current epoch, above the head) is
    /// kept. Safe to run at any time, from any process.
    pub fn gc_snapshots(&self, actor: &str) -> Result<GcStats, StorageError> {
        let mut stats = GcStats::default();
        loop {
            let (step, more) = self.kv_().transact(|tx| self.gc_step(tx, actor))?;
            stats.manifests_deleted += step.manifests_deleted;
            stats.pages_deleted += step.pages_deleted;
            stats.stages_deleted += step.stages_deleted;
            stats.transactions += 1;
            if !more {
                return Ok(stats);
            }
        }
    }

    /// One bounded garbage-collection transaction, in three rounds of
    /// reads whatever it finds (three round trips on FoundationDB): the
    /// activation record; then the head manifest, up to
    /// [`GC_MANIFESTS_PER_TXN_MAX`] older ones and up to
    /// [`GC_STAGES_PER_TXN_MAX`] stage markers, side by side; then every
    /// staged page whose writer must be checked, at once. It clears at most
    /// [`GC_PAGE_CLEARS_PER_TXN_MAX`] page versions of old manifests: an
    /// old manifest with more is rewritten without the ones cleared, so the
    /// next step goes on where this one stopped. `true`: more to do.
    fn gc_step(&self, tx: &mut Transaction, actor: &str) -> Result<(GcStats, bool), StorageError> {
        let mut st = GcStats::default();
        let Some(act) = Self::read_act(tx, actor)? else {
            return Ok((st, false));
        };
        let head = act.head_seq;
        let listed_max = GC_MANIFESTS_PER_TXN_MAX * 2;
        let mut reads = tx
            .get_ranges(&[
                RangeRead::prefix(&keys::manifest(actor, head)),
                RangeRead {
                    begin: keys::manifest(actor, 0),
                    end: keys::manifest(actor, head),
                    limit: Some(listed_max),
                },
                RangeRead {
                    limit: Some(GC_STAGES_PER_TXN_MAX),
                    ..RangeRead::prefix(&keys::stage_prefix(actor))
                },
            ])?
            .into_iter();
        let (head_parts, old, stages) = (
            reads.next().expect("three replies"),
            reads.next().expect("three replies"),
            reads.next().expect("three replies"),
        );
        let head_refs: HashSet<(u32, u32, u64)> = if head == 0 {
            HashSet::new()
        } else {
            Self::decode_manifest(actor, head, &head_parts)?
                .ok_or_else(|| {
                    StorageError::corrupt(
                        &keys::manifest(actor, head),
                        "the head manifest is missing",
                    )
                })?
                .refs()
                .collect()
        };
        // Old manifests, grouped by seq. When the listing hit its limit the
        // last group may be cut short: it waits for the next step. A
        // manifest has fewer parts than half the limit, so at least one
        // group is whole.
        let mut groups: Vec<(u64, Vec<KeyValue>)> = Vec::new();
        for (k, v) in old.iter().cloned() {
            let s = keys::manifest_seq(&k)?;
            match groups.last_mut() {
                Some((last, parts)) if *last == s => parts.push((k, v)),
                _ => groups.push((s, vec![(k, v)])),
            }
        }
        let mut more = false;
        if old.len() == listed_max {
            groups.pop();
            assert!(
                !groups.is_empty(),
                "a manifest has fewer than {listed_max} parts, so a full listing holds a whole one"
            );
            more = true;
        }
        if groups.len() > GC_MANIFESTS_PER_TXN_MAX {
            groups.truncate(GC_MANIFESTS_PER_TXN_MAX);
            more = true;
        }
        let mut budget = self.inner.clears.gc_step;
        // Versions cleared by this step (old manifests may share them).
        let mut cleared: HashSet<(u32, u32, u64)> = HashSet::new();
        for (s, parts) in groups {
            if budget == 0 {
                more = true;
                break;
            }
            let mut m = match Self::decode_manifest(actor, s, &parts) {
                Ok(Some(m)) => m,
                Ok(None) => unreachable!("a group has at least one part"),
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!(actor, seq = s, error = %e, "gc: dropping unreadable old manifest");
                    tx.clear_prefix(&keys::manifest(actor, s));
                    st.manifests_deleted += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let doomed: Vec<(u32, u32, u64)> = m
                .refs()
                .filter(|r| !head_refs.contains(r) && !cleared.contains(r))
                .collect();
            let now = doomed.len().min(budget);
            for &(mi, pg, ps) in &doomed[..now] {
                tx.clear(&keys::page(actor, mi, pg, ps));
                cleared.insert((mi, pg, ps));
            }
            st.pages_deleted += now as u64;
            budget -= now;
            tx.clear_prefix(&keys::manifest(actor, s));
            if now < doomed.len() {
                // Keep the rest for the next step: the manifest without
                // the versions cleared now.
                let gone: Vec<(u32, u32, u64)> = m.refs().filter(|r| cleared.contains(r)).collect();
                for (mi, pg, _) in gone {
                    m.memories[mi as usize].pages[pg as usize] = 0;
                }
                Self::write_manifest(tx, &m);
                more = true;
                break;
            }
            st.manifests_deleted += 1;
        }
        // Stage markers. Pages staged above the head by an owner that may
        // still be live are checked before they go: all read at once.
        // A full listing may hide more markers; go on only if this step
        // removes some (the rest of a full listing can all be in flight).
        let stages_full = stages.len() == GC_STAGES_PER_TXN_MAX;
        let mut markers = Vec::with_capacity(stages.len());
        let mut to_check = Vec::new();
        for (k, v) in stages {
            let (seq, epoch) = keys::stage_seq_epoch(&k)?;
            let in_flight = seq > head && epoch == act.epoch && act.active;
            if in_flight {
                continue;
            }
            let pages = decode::<StageMarkerV1>(&k, &v)
                .map(|mk| mk.pages)
                .unwrap_or_default();
            if seq > head {
                to_check.extend(pages.iter().map(|&(m, pg)| keys::page(actor, m, pg, seq)));
            }
            markers.push((k, seq, pages));
        }
        let mut checked = to_check.iter().cloned().zip(tx.get_many(&to_check)?);
        for (k, seq, pages) in markers {
            for (m, pg) in pages {
                let pk = keys::page(actor, m, pg, seq);
                let garbage = if seq <= head {
                    !head_refs.contains(&(m, pg, seq))
                } else {
                    // The current owner may have re-staged this very key:
                    // only drop it if an older epoch (or nobody live) wrote it.
                    let (key, value) = checked.next().expect("one read per staged page");
                    assert_eq!(key, pk, "staged pages come back in the order asked");
                    match value {
                        None => false,
                        Some(pv) => match with_archived::<ArchivedPageV2, u64>(
                            FORMAT_V3,
                            &pk,
                            &pv,
                            |page| Ok(page.epoch.to_native()),
                        ) {
                            Ok(epoch) => epoch < act.epoch || !act.active,
                            Err(_) => true,
                        },
                    }
                };
                if garbage {
                    tx.clear(&pk);
                    st.pages_deleted += 1;
                }
            }
            tx.clear(&k);
            st.stages_deleted += 1;
        }
        more |= stages_full && st.stages_deleted > 0;
        Ok((st, more))
    }
}

#[cfg(test)]
mod act_format_tests {
    use super::*;

    /// An activation record as the builds before incarnations wrote it
    /// (envelope format 1, `ActV1`), byte for byte.
    const ACT_V1_GOLDEN: &str = "0198c691220700000000000000667261ffffffffff030000000000000001000000000000000068e5cf8b0100002a00000000000000";

    #[test]
    fn activation_records_of_the_previous_format_still_load() {
        let old = ActV1 {
            epoch: 7,
            pop: "fra".into(),
            head_seq: 3,
            active: true,
            since_ms: 1_700_000_000_000,
            claim_token: 42,
        };
        let bytes = encode(&old);
        assert_eq!(hex::encode(&bytes), ACT_V1_GOLDEN, "ActV1's layout changed");
        let a = ActV2::decode(b"act", &bytes).unwrap();
        assert_eq!(
            a.public(),
            ActivationRecord {
                epoch: 7,
                pop: "fra".into(),
                incarnation: 0,
                head_seq: 3,
                active: true,
                since_ms: 1_700_000_000_000,
            }
        );
        assert_eq!(a.claim_token, 42);
        // The current format round-trips, and names the incarnation.
        let new = ActV2 {
            incarnation: 5,
            ..a
        };
        let back = ActV2::decode(b"act", &new.encode()).unwrap();
        assert_eq!(back.incarnation, 5);
        assert_eq!(new.encode()[0], FORMAT_ACT_V2);
    }
}
