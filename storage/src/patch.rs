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
//! Format: `b'P'`, version 1, crc32 of the result (LE), then lz4 (size
//! prepended) of `new XOR base`.

use crate::{PAGE_SIZE, StorageError};

const MAGIC: u8 = b'P';
const VERSION: u8 = 1;
const HEADER: usize = 6;

/// The largest patch worth writing instead of the page, in bytes.
pub const PATCH_BYTES_MAX: usize = 8 * 1024;

/// The patch that turns `base` into `new` (both one page), or `None` when
/// it would be over [`PATCH_BYTES_MAX`] (write the page instead).
pub fn encode(base: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    assert_eq!(base.len(), PAGE_SIZE, "a patch's base is one page");
    assert_eq!(new.len(), PAGE_SIZE, "a patch's result is one page");
    let mut xor = new.to_vec();
    xor_into(&mut xor, base);
    let packed = lz4_flex::compress_prepend_size(&xor);
    if HEADER + packed.len() > PATCH_BYTES_MAX {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER + packed.len());
    out.push(MAGIC);
    out.push(VERSION);
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
    if patch.len() < HEADER || patch[0] != MAGIC || patch[1] != VERSION {
        return Err(corrupt("not a page patch of a known version".into()));
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
