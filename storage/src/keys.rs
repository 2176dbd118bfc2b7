//! The key layout (DESIGN.md "Storage key layout"), in one place.
//!
//! Every key is the tuple prefix `("tern", 1)` followed by:
//! ```text
//! ("act", actor)                                  activation record
//! ("act_by_pop", pop, actor)                      '' (index, same txn)
//! ("pop", pop)                                    POP membership record
//! ("comp", digest, "h")                           component header {len, chunks}
//! ("comp", digest, "c", i)                        component chunk i (< 100 kB)
//! ("compiled", digest, engine)                    digest of the component's compiled code for an engine
//! ("type", name)                                  actor type record
//! ("token", id)                                   client token record (secret hashed)
//! ("ver", type, n)                                version n of an actor type
//! ("upfail", type, actor)                         why an actor's last upgrade failed
//! ("preup", type, actor, "h")                     an upgraded actor's state before it (header)
//! ("preup", type, actor, "c", i)                  ... chunk i
//! ("snap", actor, "m", seq, part)                 manifest of seq, split in parts
//! ("snap", actor, "p", memory, page, seq)         page image written at seq
//! ("snap", actor, "s", seq, epoch, token, part)   stage marker of a staged commit
//! ("snap", actor, "x", name)                      side record (e.g. idempotency key)
//! ("due", at_ms, actor, id)                       '' alarm due index (same txn as the alarm's side record)
//! ("ev", actor, topic, seq)                       an event a committed turn published
//! ```
//! Integers are order-preserving, so manifests and page versions sort by
//! seq. The page key carries the memory index in front of the page index,
//! since a component may have several memories.

use crate::StorageError;
use crate::tuple::{Elem, OwnedElem, pack_into, unpack};

/// The encoded prefix `("tern", 1)`.
pub const PREFIX: &[u8] = b"\x02tern\x00\x15\x01";

fn key(elems: &[Elem<'_>]) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    pack_into(&mut k, elems);
    k
}

use Elem::{Int, Str};

pub(crate) fn act(actor: &str) -> Vec<u8> {
    key(&[Str("act"), Str(actor)])
}
pub(crate) fn act_prefix() -> Vec<u8> {
    key(&[Str("act")])
}
pub(crate) fn act_by_pop(pop: &str, actor: &str) -> Vec<u8> {
    key(&[Str("act_by_pop"), Str(pop), Str(actor)])
}
pub(crate) fn act_by_pop_prefix(pop: &str) -> Vec<u8> {
    key(&[Str("act_by_pop"), Str(pop)])
}
pub(crate) fn pop(pop: &str) -> Vec<u8> {
    key(&[Str("pop"), Str(pop)])
}
pub(crate) fn pop_prefix() -> Vec<u8> {
    key(&[Str("pop")])
}
pub(crate) fn comp_prefix(digest: &str) -> Vec<u8> {
    key(&[Str("comp"), Str(digest)])
}
pub(crate) fn comp_header(digest: &str) -> Vec<u8> {
    key(&[Str("comp"), Str(digest), Str("h")])
}
pub(crate) fn comp_chunk(digest: &str, i: u64) -> Vec<u8> {
    key(&[Str("comp"), Str(digest), Str("c"), Int(i)])
}
pub(crate) fn type_(name: &str) -> Vec<u8> {
    key(&[Str("type"), Str(name)])
}
pub(crate) fn type_prefix() -> Vec<u8> {
    key(&[Str("type")])
}
pub(crate) fn version(ty: &str, n: u64) -> Vec<u8> {
    key(&[Str("ver"), Str(ty), Int(n)])
}
pub(crate) fn version_prefix(ty: &str) -> Vec<u8> {
    key(&[Str("ver"), Str(ty)])
}
pub(crate) fn upgrade_failure(ty: &str, actor: &str) -> Vec<u8> {
    key(&[Str("upfail"), Str(ty), Str(actor)])
}
pub(crate) fn pre_upgrade_prefix(ty: &str) -> Vec<u8> {
    key(&[Str("preup"), Str(ty)])
}
pub(crate) fn pre_upgrade_actor(ty: &str, actor: &str) -> Vec<u8> {
    key(&[Str("preup"), Str(ty), Str(actor)])
}
pub(crate) fn pre_upgrade_header(ty: &str, actor: &str) -> Vec<u8> {
    key(&[Str("preup"), Str(ty), Str(actor), Str("h")])
}
pub(crate) fn pre_upgrade_chunk(ty: &str, actor: &str, i: u64) -> Vec<u8> {
    key(&[Str("preup"), Str(ty), Str(actor), Str("c"), Int(i)])
}
pub(crate) fn upgrade_failure_prefix(ty: &str) -> Vec<u8> {
    key(&[Str("upfail"), Str(ty)])
}
/// The last element of a key, as an integer.
pub(crate) fn last_int(k: &[u8]) -> Result<u64, StorageError> {
    match elems(k)?.pop() {
        Some(OwnedElem::Int(v)) => Ok(v),
        _ => Err(StorageError::corrupt(
            k,
            "expected an integer as the last key element",
        )),
    }
}
pub(crate) fn compiled(digest: &str, engine: &str) -> Vec<u8> {
    key(&[Str("compiled"), Str(digest), Str(engine)])
}
pub(crate) fn compiled_prefix(digest: &str) -> Vec<u8> {
    key(&[Str("compiled"), Str(digest)])
}
pub(crate) fn token(id: &str) -> Vec<u8> {
    key(&[Str("token"), Str(id)])
}
pub(crate) fn token_prefix() -> Vec<u8> {
    key(&[Str("token")])
}
/// Everything stored for an actor's snapshots.
pub fn snap_prefix(actor: &str) -> Vec<u8> {
    key(&[Str("snap"), Str(actor)])
}
pub(crate) fn manifest(actor: &str, seq: u64) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("m"), Int(seq)])
}
pub(crate) fn manifest_part(actor: &str, seq: u64, part: u64) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("m"), Int(seq), Int(part)])
}
/// The key of a page image (public for corruption tests and tools).
pub fn page(actor: &str, memory: u32, page: u32, seq: u64) -> Vec<u8> {
    key(&[
        Str("snap"),
        Str(actor),
        Str("p"),
        Int(memory.into()),
        Int(page.into()),
        Int(seq),
    ])
}
/// All page images of an actor.
pub fn page_prefix(actor: &str) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("p")])
}
/// All page images of one memory of an actor.
pub(crate) fn page_memory_prefix(actor: &str, memory: u32) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("p"), Int(memory.into())])
}
pub(crate) fn stage_prefix(actor: &str) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("s")])
}
pub(crate) fn stage_token(actor: &str, seq: u64, epoch: u64, token: u64) -> Vec<u8> {
    key(&[
        Str("snap"),
        Str(actor),
        Str("s"),
        Int(seq),
        Int(epoch),
        Int(token),
    ])
}
pub(crate) fn stage_marker(actor: &str, seq: u64, epoch: u64, token: u64, part: u64) -> Vec<u8> {
    key(&[
        Str("snap"),
        Str(actor),
        Str("s"),
        Int(seq),
        Int(epoch),
        Int(token),
        Int(part),
    ])
}
pub(crate) fn extra(actor: &str, name: &str) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("x"), Str(name)])
}
pub(crate) fn extra_prefix(actor: &str) -> Vec<u8> {
    key(&[Str("snap"), Str(actor), Str("x")])
}

fn elems(k: &[u8]) -> Result<Vec<OwnedElem>, StorageError> {
    k.strip_prefix(PREFIX)
        .and_then(unpack)
        .ok_or_else(|| StorageError::corrupt(k, "key does not decode as a tern key"))
}

/// The last element of a key, as a string.
pub(crate) fn last_str(k: &[u8]) -> Result<String, StorageError> {
    match elems(k)?.pop() {
        Some(OwnedElem::Str(s)) => Ok(s),
        _ => Err(StorageError::corrupt(
            k,
            "expected a string as the last key element",
        )),
    }
}

fn int_at(k: &[u8], i: usize) -> Result<u64, StorageError> {
    match elems(k)?.get(i) {
        Some(OwnedElem::Int(v)) => Ok(*v),
        _ => Err(StorageError::corrupt(
            k,
            format!("expected an integer at key element {i}"),
        )),
    }
}

/// The seq of a manifest part key.
pub(crate) fn manifest_seq(k: &[u8]) -> Result<u64, StorageError> {
    int_at(k, 3)
}

/// (seq, epoch) of a stage marker key.
pub(crate) fn stage_seq_epoch(k: &[u8]) -> Result<(u64, u64), StorageError> {
    Ok((int_at(k, 3)?, int_at(k, 4)?))
}

/// The alarm due index: `("due", at_ms, actor, id)`, ordered by due time.
pub(crate) fn due(at_ms: u64, actor: &str, id: u64) -> Vec<u8> {
    key(&[Str("due"), Int(at_ms), Str(actor), Int(id)])
}
/// Every due-index entry with a due time below `at_ms`.
pub(crate) fn due_until(at_ms: u64) -> (Vec<u8>, Vec<u8>) {
    (key(&[Str("due")]), key(&[Str("due"), Int(at_ms)]))
}
/// (at_ms, actor, id) of a due-index key.
pub(crate) fn due_parts(k: &[u8]) -> Result<(u64, String, u64), StorageError> {
    match elems(k)?.as_slice() {
        [
            _,
            OwnedElem::Int(at),
            OwnedElem::Str(actor),
            OwnedElem::Int(id),
        ] => Ok((*at, actor.clone(), *id)),
        _ => Err(StorageError::corrupt(k, "not an alarm due-index key")),
    }
}
/// An event an actor published: `("ev", actor, topic, seq)`.
pub(crate) fn event(actor: &str, topic: &str, seq: u64) -> Vec<u8> {
    key(&[Str("ev"), Str(actor), Str(topic), Int(seq)])
}
/// Every event of one topic of an actor.
pub(crate) fn event_topic_prefix(actor: &str, topic: &str) -> Vec<u8> {
    key(&[Str("ev"), Str(actor), Str(topic)])
}
