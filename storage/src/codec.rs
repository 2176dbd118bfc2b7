//! Value envelope: every record value this crate stores is
//! `[format version: u8][crc32 of payload: u32 LE][payload: rkyv archive]`.
//!
//! Loading checks the version and the checksum, then validates the archive
//! with bytecheck before touching it; bytes from storage are never trusted.
//!
//! Records are at [`FORMAT_V1`], except snapshot values, which are at
//! [`FORMAT_V3`], and activation records, which are written at format 4
//! (they name the claiming incarnation; format 1 ones are still read). A page value's archive holds the page image packed by
//! [`pack_page`] (lz4-compressed, or raw when compression does not shrink
//! it) with a second crc32 over the *uncompressed* image **bound to where
//! the page belongs** ([`PageBinding`]: actor, memory, page index and
//! snapshot version), checked by [`unpack_page`] after decompression. The
//! envelope crc catches damage to the stored bytes before they reach the
//! decompressor; the bound image crc and an exact length check catch
//! anything the decompression got wrong, and a valid page moved to another
//! actor, page or version. A manifest names its own actor and version, so
//! the envelope crc binds it the same way.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::StorageError;

/// The envelope format of every record except page values.
pub(crate) const FORMAT_V1: u8 = 1;
/// The envelope format of snapshot values bound to their place: page
/// values (packed page images whose crc covers their actor, page and
/// version, see [`pack_page`]) and manifests (which name their actor and
/// version). Older formats (V2 pages, V1 manifests, whose checksums were
/// not bound) are refused as corrupt instead of trusted.
pub(crate) const FORMAT_V3: u8 = 3;
/// Bytes the envelope adds in front of the archive.
pub(crate) const ENVELOPE_BYTES: usize = 5;

/// Serializes `value` into a [`FORMAT_V1`] envelope.
pub(crate) fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    encode_as(FORMAT_V1, value)
}

/// Serializes `value` into an envelope of format `version`.
pub(crate) fn encode_as<T>(version: u8, value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    // Serializing plain owned data into a growable buffer cannot fail.
    let payload = rkyv::to_bytes::<rancor::Error>(value).expect("rkyv serialization of owned data");
    let mut out = Vec::with_capacity(ENVELOPE_BYTES + payload.len());
    out.push(version);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Checks the envelope of `bytes` (stored at `key`, expected at format
/// `version`) and returns the payload copied into aligned memory.
fn open_envelope(key: &[u8], bytes: &[u8], version: u8) -> Result<AlignedVec, StorageError> {
    if bytes.len() < ENVELOPE_BYTES {
        return Err(StorageError::corrupt(
            key,
            format!("value is {} bytes, shorter than its header", bytes.len()),
        ));
    }
    if bytes[0] != version {
        return Err(StorageError::corrupt(
            key,
            format!(
                "unknown format version {} (this build reads {version} here)",
                bytes[0]
            ),
        ));
    }
    let want = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[ENVELOPE_BYTES..];
    let got = crc32fast::hash(payload);
    if want != got {
        return Err(StorageError::corrupt(
            key,
            format!("crc32 mismatch: stored {want:08x}, computed {got:08x}"),
        ));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    Ok(aligned)
}

/// Checks and deserializes a value stored at `key`.
pub(crate) fn decode<T>(key: &[u8], bytes: &[u8]) -> Result<T, StorageError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    decode_as(FORMAT_V1, key, bytes)
}

/// Checks and deserializes a value stored at `key` in an envelope of
/// format `version`.
pub(crate) fn decode_as<T>(version: u8, key: &[u8], bytes: &[u8]) -> Result<T, StorageError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let aligned = open_envelope(key, bytes, version)?;
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|e| StorageError::corrupt(key, format!("invalid archive: {e}")))
}

/// Checks a value stored at `key` in an envelope of format `version` and
/// hands its validated archive to `f`, without deserializing (used for page
/// values).
pub(crate) fn with_archived<A, R>(
    version: u8,
    key: &[u8],
    bytes: &[u8],
    f: impl FnOnce(&A) -> Result<R, StorageError>,
) -> Result<R, StorageError>
where
    A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let aligned = open_envelope(key, bytes, version)?;
    let archived = rkyv::access::<A, rancor::Error>(&aligned)
        .map_err(|e| StorageError::corrupt(key, format!("invalid archive: {e}")))?;
    f(archived)
}

// ------------------------------------------------------------ page images

/// A packed page's `data` is the image itself.
pub(crate) const PAGE_RAW: u8 = 0;
/// A packed page's `data` is an lz4 block (no size prefix) that
/// decompresses to exactly the page size.
pub(crate) const PAGE_LZ4: u8 = 1;

/// Flag on a page's encoding: `data` is sealed with a [`PageKey`]
/// (key id, nonce, then the XChaCha20-Poly1305 ciphertext of the packed
/// bytes); the low bits still say how the image was packed.
pub(crate) const PAGE_SEALED: u8 = 0x80;

/// Bytes of a sealed page's key id.
const KEY_ID_BYTES: usize = 8;
/// Bytes of an XChaCha20-Poly1305 nonce (random nonces of this size do not
/// collide in practice).
const NONCE_BYTES: usize = 24;

/// A key that seals snapshot pages at rest with XChaCha20-Poly1305. The
/// associated data is the page's binding (actor, memory, page index,
/// version), its packing and its checksum, so a sealed page moved to
/// another place fails to open, like an unsealed one fails its checksum.
#[derive(Clone)]
pub struct PageKey {
    cipher: chacha20poly1305::XChaCha20Poly1305,
    id: [u8; KEY_ID_BYTES],
}

impl std::fmt::Debug for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageKey({})", self.id_hex())
    }
}

impl PageKey {
    /// Bytes of a key.
    pub const BYTES: usize = 32;

    /// The key `bytes`.
    pub fn new(bytes: &[u8; PageKey::BYTES]) -> PageKey {
        use chacha20poly1305::KeyInit;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"tern-page-key-id\0");
        h.update(bytes);
        let digest = h.finalize();
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest[..KEY_ID_BYTES]);
        PageKey {
            cipher: chacha20poly1305::XChaCha20Poly1305::new(bytes.into()),
            id,
        }
    }

    /// A fresh random key, as 64 hex digits (what a key file holds).
    pub fn generate_hex() -> String {
        use rand::Rng;
        hex::encode(rand::rng().random::<[u8; PageKey::BYTES]>())
    }

    /// Reads a key file: 64 hex digits (surrounding whitespace ignored).
    pub fn from_file(path: &std::path::Path) -> Result<PageKey, StorageError> {
        let bad = |why: String| StorageError::PageKey(format!("{}: {why}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > 1024 {
            return Err(bad("a key file holds 64 hex digits".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut bytes = [0u8; PageKey::BYTES];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| bad("a key file holds 64 hex digits (32 bytes)".into()))?;
        Ok(PageKey::new(&bytes))
    }

    /// The key's id (not secret): which key sealed a page.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    fn seal(&self, at: &PageBinding<'_>, encoding: u8, crc: u32, data: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, Payload};
        use rand::Rng;
        let nonce: [u8; NONCE_BYTES] = rand::rng().random();
        let aad = at.aad(encoding, crc);
        // Encryption of a buffer that fits in memory cannot fail.
        let ct = self
            .cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: data,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption");
        let mut out = Vec::with_capacity(KEY_ID_BYTES + NONCE_BYTES + ct.len());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open(
        &self,
        key: &[u8],
        at: &PageBinding<'_>,
        encoding: u8,
        crc: u32,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        use chacha20poly1305::aead::{Aead, Payload};
        if sealed.len() < KEY_ID_BYTES + NONCE_BYTES {
            return Err(StorageError::corrupt(key, "sealed page is truncated"));
        }
        let (id, rest) = sealed.split_at(KEY_ID_BYTES);
        if id != self.id {
            return Err(StorageError::PageKey(format!(
                "a page of actor {:?} was sealed with key {}, but this process has key {}; start it with the key file the store was written with",
                at.actor,
                hex::encode(id),
                self.id_hex()
            )));
        }
        let (nonce, ct) = rest.split_at(NONCE_BYTES);
        let aad = at.aad(encoding, crc);
        let nonce: &[u8; NONCE_BYTES] = nonce.try_into().expect("split at NONCE_BYTES");
        self.cipher
            .decrypt(nonce.into(), Payload { msg: ct, aad: &aad })
            .map_err(|_| {
                StorageError::corrupt(
                    key,
                    format!(
                        "sealed page of actor {:?} memory {} page {} version {} does not open: it is damaged or was moved here from another place",
                        at.actor, at.memory, at.page, at.seq
                    ),
                )
            })
    }
}

/// Where a page belongs: its checksum covers these, so a valid page copied
/// to another actor, memory, page index or snapshot version fails it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageBinding<'a> {
    pub(crate) actor: &'a str,
    pub(crate) memory: u32,
    pub(crate) page: u32,
    pub(crate) seq: u64,
}

impl PageBinding<'_> {
    /// crc32 over the binding, then `image`.
    fn crc(&self, image: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(b"tern-page\0");
        h.update(&(self.actor.len() as u64).to_le_bytes());
        h.update(self.actor.as_bytes());
        h.update(&self.memory.to_le_bytes());
        h.update(&self.page.to_le_bytes());
        h.update(&self.seq.to_le_bytes());
        h.update(image);
        h.finalize()
    }

    /// What a sealed page's ciphertext is bound to.
    fn aad(&self, encoding: u8, crc: u32) -> Vec<u8> {
        let mut a = Vec::with_capacity(self.actor.len() + 40);
        a.extend_from_slice(b"tern-page\0");
        a.extend_from_slice(&(self.actor.len() as u64).to_le_bytes());
        a.extend_from_slice(self.actor.as_bytes());
        a.extend_from_slice(&self.memory.to_le_bytes());
        a.extend_from_slice(&self.page.to_le_bytes());
        a.extend_from_slice(&self.seq.to_le_bytes());
        a.push(encoding);
        a.extend_from_slice(&crc.to_le_bytes());
        a
    }
}

/// A page image packed for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedPage {
    /// [`PAGE_LZ4`], or [`PAGE_RAW`] when compression did not shrink the
    /// image (random or already-compressed bytes).
    pub(crate) encoding: u8,
    /// crc32 of the binding and the uncompressed image.
    pub(crate) image_crc: u32,
    /// The stored bytes.
    pub(crate) data: Vec<u8>,
}

/// Packs a page image that belongs at `at`: lz4 if that makes it smaller,
/// raw otherwise; then sealed with `key`, if given.
pub(crate) fn pack_page(image: &[u8], at: &PageBinding<'_>, key: Option<&PageKey>) -> PackedPage {
    let image_crc = at.crc(image);
    let compressed = lz4_flex::block::compress(image);
    let (encoding, data) = if compressed.len() < image.len() {
        (PAGE_LZ4, compressed)
    } else {
        (PAGE_RAW, image.to_vec())
    };
    match key {
        None => PackedPage {
            encoding,
            image_crc,
            data,
        },
        Some(k) => PackedPage {
            encoding: encoding | PAGE_SEALED,
            image_crc,
            data: k.seal(at, encoding, image_crc, &data),
        },
    }
}

/// Restores a page image packed by [`pack_page`] (stored at `key`) into
/// `out`, whose length is the page size. Fails with
/// [`StorageError::Corrupt`] (never a panic) on an unknown encoding, a
/// malformed lz4 stream, an image that is not exactly `out.len()` bytes, or
/// an image whose crc32 bound to `at` is not `image_crc` (damaged, or a
/// valid page of another actor, page or version). A sealed page needs
/// `page_key` ([`StorageError::PageKey`] without it or with another key);
/// an unsealed page is read with or without one, so a store can start
/// sealing pages at any time. On error `out` holds garbage.
pub(crate) fn unpack_page(
    key: &[u8],
    encoding: u8,
    image_crc: u32,
    data: &[u8],
    out: &mut [u8],
    at: &PageBinding<'_>,
    page_key: Option<&PageKey>,
) -> Result<(), StorageError> {
    let opened;
    let (encoding, data) = if encoding & PAGE_SEALED != 0 {
        let inner = encoding & !PAGE_SEALED;
        let k = page_key.ok_or_else(|| {
            StorageError::PageKey(format!(
                "the pages of actor {:?} are encrypted; start this process with the store's key file (--page-key-file)",
                at.actor
            ))
        })?;
        opened = k.open(key, at, inner, image_crc, data)?;
        (inner, opened.as_slice())
    } else {
        (encoding, data)
    };
    match encoding {
        PAGE_RAW => {
            if data.len() != out.len() {
                return Err(StorageError::corrupt(
                    key,
                    format!(
                        "raw page holds {} bytes, expected {}",
                        data.len(),
                        out.len()
                    ),
                ));
            }
            out.copy_from_slice(data);
        }
        PAGE_LZ4 => match lz4_flex::block::decompress_into(data, out) {
            Ok(n) if n == out.len() => {}
            Ok(n) => {
                return Err(StorageError::corrupt(
                    key,
                    format!(
                        "compressed page decompresses to {n} bytes, expected {}",
                        out.len()
                    ),
                ));
            }
            Err(e) => {
                return Err(StorageError::corrupt(
                    key,
                    format!("compressed page does not decompress: {e}"),
                ));
            }
        },
        other => {
            return Err(StorageError::corrupt(
                key,
                format!("unknown page encoding {other}"),
            ));
        }
    }
    let got = at.crc(out);
    if got != image_crc {
        return Err(StorageError::corrupt(
            key,
            format!(
                "page checksum mismatch: stored {image_crc:08x}, computed {got:08x} for actor {:?} memory {} page {} version {}; the page is damaged or was moved here from another actor, page or version",
                at.actor, at.memory, at.page, at.seq
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PAGE: usize = 65536;
    const AT: PageBinding<'static> = PageBinding {
        actor: "counter/a",
        memory: 0,
        page: 3,
        seq: 7,
    };

    fn sparse(writes: &[(u16, u8)]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        for &(at, b) in writes {
            p[at as usize] = b;
        }
        p
    }

    #[test]
    fn zero_heavy_page_compresses_and_unpacks() {
        let image = sparse(&[(0, 1), (40_000, 7), (65_535, 9)]);
        let packed = pack_page(&image, &AT, None);
        assert_eq!(packed.encoding, PAGE_LZ4);
        assert!(packed.data.len() < 512, "{} bytes", packed.data.len());
        let mut out = vec![0xAAu8; PAGE];
        unpack_page(
            b"k",
            packed.encoding,
            packed.image_crc,
            &packed.data,
            &mut out,
            &AT,
            None,
        )
        .unwrap();
        assert_eq!(out, image);
    }

    #[test]
    fn wrong_length_and_unknown_encoding_are_corrupt() {
        let image = sparse(&[(5, 5)]);
        let packed = pack_page(&image, &AT, None);
        // The same stream decompressed into a buffer of another size.
        for len in [PAGE - 1, PAGE + 1] {
            let mut out = vec![0u8; len];
            let r = unpack_page(
                b"k",
                PAGE_LZ4,
                packed.image_crc,
                &packed.data,
                &mut out,
                &AT,
                None,
            );
            assert!(
                matches!(r, Err(StorageError::Corrupt { .. })),
                "{len}: {r:?}"
            );
        }
        let mut out = vec![0u8; PAGE];
        let r = unpack_page(b"k", 9, packed.image_crc, &packed.data, &mut out, &AT, None);
        assert!(matches!(r, Err(StorageError::Corrupt { .. })));
        // Raw data must be exactly a page.
        let r = unpack_page(
            b"k",
            PAGE_RAW,
            packed.image_crc,
            &image[1..],
            &mut out,
            &AT,
            None,
        );
        assert!(matches!(r, Err(StorageError::Corrupt { .. })));
        // A wrong image crc.
        let r = unpack_page(
            b"k",
            PAGE_LZ4,
            !packed.image_crc,
            &packed.data,
            &mut out,
            &AT,
            None,
        );
        assert!(matches!(r, Err(StorageError::Corrupt { .. })));
    }

    fn key(b: u8) -> PageKey {
        PageKey::new(&[b; PageKey::BYTES])
    }

    #[test]
    fn page_moved_to_another_place_is_corrupt() {
        let image = sparse(&[(9, 9)]);
        // Unsealed, the checksum catches it; sealed, the AEAD does.
        for k in [None, Some(key(1))] {
            let packed = pack_page(&image, &AT, k.as_ref());
            let elsewhere = [
                PageBinding {
                    actor: "counter/b",
                    ..AT
                },
                PageBinding { memory: 1, ..AT },
                PageBinding { page: 4, ..AT },
                PageBinding { seq: 8, ..AT },
            ];
            for at in elsewhere {
                let mut out = vec![0u8; PAGE];
                let r = unpack_page(
                    b"k",
                    packed.encoding,
                    packed.image_crc,
                    &packed.data,
                    &mut out,
                    &at,
                    k.as_ref(),
                );
                match r {
                    Err(StorageError::Corrupt { reason, .. }) => {
                        assert!(reason.contains("moved here"), "{reason}")
                    }
                    other => panic!("{at:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn sealed_page_hides_its_bytes_and_needs_its_key() {
        let marker = b"player-secret-inventory";
        let mut image = vec![0u8; PAGE];
        image[100..100 + marker.len()].copy_from_slice(marker);
        let plain = pack_page(&image, &AT, None);
        let k = key(7);
        let sealed = pack_page(&image, &AT, Some(&k));
        assert_eq!(sealed.encoding & PAGE_SEALED, PAGE_SEALED);
        let has = |d: &[u8]| d.windows(marker.len()).any(|w| w == marker);
        assert!(
            has(&plain.data),
            "the control shows the marker survives packing"
        );
        assert!(!has(&sealed.data), "sealed bytes show the plaintext");
        let mut out = vec![0u8; PAGE];
        let open = |out: &mut [u8], key: Option<&PageKey>| {
            unpack_page(
                b"k",
                sealed.encoding,
                sealed.image_crc,
                &sealed.data,
                out,
                &AT,
                key,
            )
        };
        open(&mut out, Some(&k)).unwrap();
        assert_eq!(out, image);
        // Without a key, or with another one: a configuration error naming
        // the key, not damage.
        for other in [None, Some(key(8))] {
            match open(&mut out, other.as_ref()) {
                Err(StorageError::PageKey(m)) => assert!(m.contains("key"), "{m}"),
                r => panic!("{r:?}"),
            }
        }
        // A flipped ciphertext bit is damage.
        let mut bad = sealed.data.clone();
        *bad.last_mut().unwrap() ^= 1;
        let r = unpack_page(
            b"k",
            sealed.encoding,
            sealed.image_crc,
            &bad,
            &mut out,
            &AT,
            Some(&k),
        );
        assert!(matches!(r, Err(StorageError::Corrupt { .. })), "{r:?}");
        // An unsealed page still reads with a key (sealing can start any time).
        unpack_page(
            b"k",
            plain.encoding,
            plain.image_crc,
            &plain.data,
            &mut out,
            &AT,
            Some(&k),
        )
        .unwrap();
        assert_eq!(out, image);
    }

    #[test]
    fn page_key_files_are_checked() {
        let d = std::env::temp_dir().join(format!("tern-key-{}", std::process::id()));
        std::fs::write(&d, format!("{}\n", PageKey::generate_hex())).unwrap();
        PageKey::from_file(&d).unwrap();
        std::fs::write(&d, "not hex").unwrap();
        assert!(matches!(
            PageKey::from_file(&d),
            Err(StorageError::PageKey(_))
        ));
        let _ = std::fs::remove_file(&d);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any page packs and unpacks to itself, compressed or raw.
        #[test]
        fn pack_unpack_roundtrip(
            writes in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..2000),
            noise in any::<bool>(),
        ) {
            let mut image = sparse(&writes);
            if noise {
                let mut x = writes.len() as u64 | 1;
                for b in image.iter_mut().step_by(3) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            let packed = pack_page(&image, &AT, None);
            prop_assert!(packed.data.len() <= PAGE);
            let mut out = vec![0u8; PAGE];
            unpack_page(b"k", packed.encoding, packed.image_crc, &packed.data, &mut out, &AT, None).unwrap();
            prop_assert!(out == image);
        }

        /// Arbitrary bytes as an lz4 stream never panic and never unpack
        /// unless they really produce the page the crc names.
        #[test]
        fn garbage_stream_is_corrupt_not_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let image = vec![0u8; PAGE];
            let crc = AT.crc(&image);
            let mut out = vec![0u8; PAGE];
            match unpack_page(b"k", PAGE_LZ4, crc, &data, &mut out, &AT, None) {
                Ok(()) => prop_assert!(out == image),
                Err(e) => prop_assert!(matches!(e, StorageError::Corrupt { .. }), "{:?}", e),
            }
        }

        /// A valid stream with a flipped byte, or cut short, is caught.
        #[test]
        fn damaged_stream_never_yields_garbage(
            writes in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..300),
            at in any::<prop::sample::Index>(),
            mask in 1u8..,
            cut in any::<bool>(),
        ) {
            let image = sparse(&writes);
            let packed = pack_page(&image, &AT, None);
            prop_assume!(packed.encoding == PAGE_LZ4);
            let mut data = packed.data.clone();
            let i = at.index(data.len());
            if cut {
                data.truncate(i);
            } else {
                data[i] ^= mask;
            }
            let mut out = vec![0u8; PAGE];
            match unpack_page(b"k", PAGE_LZ4, packed.image_crc, &data, &mut out, &AT, None) {
                Ok(()) => prop_assert!(out == image),
                Err(e) => prop_assert!(matches!(e, StorageError::Corrupt { .. }), "{:?}", e),
            }
        }
    }
}
