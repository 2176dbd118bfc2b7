//! Page patches: a changed 64 KiB page stored as the compressed XOR of its
//! new image with the image the store already holds for it, when that is
//! much smaller than the page. Interpreters (CPython, StarlingMonkey)
//! change a few bytes on each of many pages per turn (reference counts,
//! allocator state); a patch keeps such a turn's commit small.
//!
//! The runtime stores patches as `extra` side records of the snapshot, in
//! the same commit as the pages, and applies them on restore. A patch
//! names its result's crc32, so a patch applied to the wrong base, or a
//! damaged one, is `Corrupt`, never a wrong image.
//!
//! Format: `b'P'`, a version, crc32 of the result (LE), then lz4 (size
//! prepended) of:
//! - version 2 (written now): the runs of `new XOR base` that are not zero,
//!   each as offset (u16 LE), length (u16 LE, 1 to [`RUN_BYTES_MAX`]) and
//!   its bytes, in increasing offset order; zero gaps of up to [`RUN_GAP`]
//!   bytes stay inside a run;
//! - version 1 (still read): the whole `new XOR base` page. Unpacking a
//!   page of zeros through lz4's safe decoder cost about 50 µs a page,
//!   most of a restore's time for an actor whose pages are all patched;
//!   version 2 touches only the bytes that changed.

use crate::{PAGE_SIZE, StorageError};

const MAGIC: u8 = b'P';
const VERSION_PAGE: u8 = 1;
const VERSION_RUNS: u8 = 2;
const HEADER: usize = 6;
/// Longest run of a version-2 patch.
const RUN_BYTES_MAX: usize = 32 * 1024;
/// Zero bytes a run may span before it is cut in two.
const RUN_GAP: usize = 8;

/// The largest patch worth writing instead of the page, in bytes.
pub const PATCH_BYTES_MAX: usize = 8 * 1024;

/// The patch that turns `base` into `new` (both one page), or `None` when
/// it would be over [`PATCH_BYTES_MAX`] (write the page instead).
pub fn encode(base: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    assert_eq!(base.len(), PAGE_SIZE, "a patch's base is one page");
    assert_eq!(new.len(), PAGE_SIZE, "a patch's result is one page");
    let mut xor = new.to_vec();
    xor_into(&mut xor, base);
    let runs = runs_of(&xor);
    if runs.len() > 4 * PATCH_BYTES_MAX {
        return None;
    }
    let packed = lz4_flex::compress_prepend_size(&runs);
    if HEADER + packed.len() > PATCH_BYTES_MAX {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER + packed.len());
    out.push(MAGIC);
    out.push(VERSION_RUNS);
    out.extend_from_slice(&crc32fast::hash(new).to_le_bytes());
    out.extend_from_slice(&packed);
    Some(out)
}

/// Applies `patch` (named `what` in errors) to `base` in place.
pub fn apply(what: &str, base: &mut [u8], patch: &[u8]) -> Result<(), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: what.to_string(),
        reason,
    };
    if base.len() != PAGE_SIZE {
        return Err(corrupt(format!(
            "a page patch applies to a whole page, not {} bytes",
            base.len()
        )));
    }
    if patch.len() < HEADER
        || patch[0] != MAGIC
        || !(patch[1] == VERSION_PAGE || patch[1] == VERSION_RUNS)
    {
        return Err(corrupt("not a page patch of a known version".into()));
    }
    if patch[1] == VERSION_RUNS {
        return apply_runs(&corrupt, base, patch);
    }
    let crc = u32::from_le_bytes(patch[2..6].try_into().expect("4 bytes"));
    let packed = &patch[HEADER..];
    // The prepended size is checked before anything is allocated.
    let size = packed
        .get(..4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize);
    if size != Some(PAGE_SIZE) {
        return Err(corrupt(format!(
            "a page patch must unpack to {PAGE_SIZE} bytes (says {size:?})"
        )));
    }
    // The XOR is unpacked into a buffer of the thread's, folded with the
    // base there, checked, and only then copied over the base: no
    // allocation per page, and a bad patch leaves the base as it was.
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(PAGE_SIZE, 0);
        let n = lz4_flex::decompress_into(&packed[4..], scratch)
            .map_err(|e| corrupt(format!("page patch does not unpack: {e}")))?;
        if n != PAGE_SIZE {
            return Err(corrupt("page patch unpacked to the wrong size".into()));
        }
        xor_into(scratch, base);
        if crc32fast::hash(scratch) != crc {
            return Err(corrupt(
                "page patch applied to a base it was not made for (crc mismatch)".into(),
            ));
        }
        base.copy_from_slice(scratch);
        Ok(())
    })
}

/// The index of the first byte of `xor` at or after `from` that is not
/// zero, skipping zeros eight bytes at a time (a patch's XOR is mostly
/// zeros, and every commit of a patched page scans one).
fn next_nonzero(xor: &[u8], mut from: usize) -> Option<usize> {
    while from < xor.len() && !from.is_multiple_of(8) {
        if xor[from] != 0 {
            return Some(from);
        }
        from += 1;
    }
    let words = xor[from..].chunks_exact(8);
    let mut at = from;
    for w in words {
        if u64::from_ne_bytes(w.try_into().expect("8 bytes")) != 0 {
            return (at..at + 8).find(|&i| xor[i] != 0);
        }
        at += 8;
    }
    (at..xor.len()).find(|&i| xor[i] != 0)
}

/// The runs of `xor` that are not zero (see the module docs).
fn runs_of(xor: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(start) = next_nonzero(xor, i) {
        let mut end = start + 1;
        let mut j = end;
        while j < xor.len() && j - start < RUN_BYTES_MAX {
            if xor[j] != 0 {
                end = j + 1;
            } else if j - end >= RUN_GAP {
                break;
            }
            j += 1;
        }
        out.extend_from_slice(&(start as u16).to_le_bytes());
        out.extend_from_slice(&((end - start) as u16).to_le_bytes());
        out.extend_from_slice(&xor[start..end]);
        i = end;
    }
    out
}

/// [`apply`] for a version-2 patch: the runs are folded into a copy of the
/// base, checked, and only then copied over it.
fn apply_runs(
    corrupt: &dyn Fn(String) -> StorageError,
    base: &mut [u8],
    patch: &[u8],
) -> Result<(), StorageError> {
    let crc = u32::from_le_bytes(patch[2..6].try_into().expect("4 bytes"));
    let packed = &patch[HEADER..];
    // The prepended size is checked before anything is allocated: runs
    // hold at most a page and a 4-byte header per byte of it.
    let size = packed
        .get(..4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| corrupt("page patch is truncated".into()))?;
    if size > 5 * PAGE_SIZE {
        return Err(corrupt(format!(
            "page patch runs say {size} bytes, over {}",
            5 * PAGE_SIZE
        )));
    }
    let runs = lz4_flex::decompress_size_prepended(packed)
        .map_err(|e| corrupt(format!("page patch does not unpack: {e}")))?;
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        scratch.extend_from_slice(base);
        let mut at = 0;
        let mut next = 0;
        while at < runs.len() {
            let head = runs
                .get(at..at + 4)
                .ok_or_else(|| corrupt("page patch run header is truncated".into()))?;
            let off = u16::from_le_bytes([head[0], head[1]]) as usize;
            let len = u16::from_le_bytes([head[2], head[3]]) as usize;
            if len == 0 || off < next || off + len > PAGE_SIZE {
                return Err(corrupt(format!(
                    "page patch run at {off} of {len} bytes is out of order or out of the page"
                )));
            }
            let bytes = runs
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| corrupt("page patch run is truncated".into()))?;
            xor_into(&mut scratch[off..off + len], bytes);
            next = off + len;
            at += 4 + len;
        }
        if crc32fast::hash(scratch) != crc {
            return Err(corrupt(
                "page patch applied to a base it was not made for (crc mismatch)".into(),
            ));
        }
        base.copy_from_slice(scratch);
        Ok(())
    })
}

thread_local! {
    /// One page of scratch space per thread for [`apply`].
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst ^= src`, eight bytes at a time (the compiler vectorises it).
fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        let x = u64::from_ne_bytes(d.try_into().expect("8 bytes"))
            ^ u64::from_ne_bytes(s.try_into().expect("8 bytes"));
        d.copy_from_slice(&x.to_ne_bytes());
    }
    let tail = dst.len() / 8 * 8;
    for (d, s) in dst[tail..].iter_mut().zip(&src[tail..]) {
        *d ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_change_patches_and_applies() {
        let base: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = base.clone();
        new[100] ^= 1;
        new[40_000] = 9;
        let p = encode(&base, &new).expect("a small change makes a small patch");
        assert!(p.len() < 1024, "{} bytes", p.len());
        let mut img = base.clone();
        apply("t", &mut img, &p).unwrap();
        assert_eq!(img, new);
    }

    /// Patches written before version 2 (the whole XOR page) still apply.
    #[test]
    fn version_1_patches_still_apply() {
        let base: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 13 % 251) as u8).collect();
        let mut new = base.clone();
        new[7] = 1;
        new[PAGE_SIZE - 1] ^= 0x80;
        let mut xor = new.clone();
        xor_into(&mut xor, &base);
        let mut p = vec![MAGIC, VERSION_PAGE];
        p.extend_from_slice(&crc32fast::hash(&new).to_le_bytes());
        p.extend_from_slice(&lz4_flex::compress_prepend_size(&xor));
        let mut img = base.clone();
        apply("t", &mut img, &p).unwrap();
        assert_eq!(img, new);
    }

    /// Runs at the page's edges, runs longer than one run may be, and many
    /// scattered bytes all round-trip.
    #[test]
    fn runs_round_trip_at_edges_and_in_pieces() {
        let base = vec![0x5Au8; PAGE_SIZE];
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let mut edges = base.clone();
        edges[0] = 1;
        edges[PAGE_SIZE - 1] = 2;
        cases.push(edges);
        let mut long = base.clone();
        for (i, b) in long[100..100 + 40_000].iter_mut().enumerate() {
            *b = (i % 7) as u8 + 1;
        }
        cases.push(long);
        let mut scattered = base.clone();
        for i in (0..PAGE_SIZE).step_by(97) {
            scattered[i] ^= 0xFF;
        }
        cases.push(scattered);
        for new in cases {
            let mut xor = new.clone();
            xor_into(&mut xor, &base);
            // The runs alone (whatever the size limit says) rebuild it.
            let runs = runs_of(&xor);
            let mut p = vec![MAGIC, VERSION_RUNS];
            p.extend_from_slice(&crc32fast::hash(&new).to_le_bytes());
            p.extend_from_slice(&lz4_flex::compress_prepend_size(&runs));
            let mut img = base.clone();
            apply("t", &mut img, &p).unwrap();
            assert_eq!(img, new);
        }
    }

    #[test]
    fn big_change_is_no_patch() {
        let base = vec![0u8; PAGE_SIZE];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let new: Vec<u8> = (0..PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(encode(&base, &new), None);
    }

    #[test]
    fn wrong_base_or_damage_is_corrupt() {
        let base = vec![1u8; PAGE_SIZE];
        let mut new = base.clone();
        new[5] = 2;
        let p = encode(&base, &new).unwrap();
        let mut other = vec![3u8; PAGE_SIZE];
        assert!(matches!(
            apply("t", &mut other, &p),
            Err(StorageError::Corrupt { .. })
        ));
        assert_eq!(
            other,
            vec![3u8; PAGE_SIZE],
            "a failed patch leaves the base"
        );
        let mut bad = p.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        let mut img = base.clone();
        assert!(apply("t", &mut img, &bad).is_err());
        assert!(apply("t", &mut img, &p[..3]).is_err());
        let mut huge = p.clone();
        huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(apply("t", &mut img, &huge).is_err());
    }
}
