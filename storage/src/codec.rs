//! Value envelope: every record value this crate stores is
//! `[format version: u8][crc32 of payload: u32 LE][payload: rkyv archive]`.
//!
//! Loading checks the version and the checksum, then validates the archive
//! with bytecheck before touching it; bytes from storage are never trusted.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::StorageError;

/// The current envelope format.
pub(crate) const FORMAT_V1: u8 = 1;
/// Bytes the envelope adds in front of the archive.
pub(crate) const ENVELOPE_BYTES: usize = 5;

/// Serializes `value` into an envelope.
pub(crate) fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    // Serializing plain owned data into a growable buffer cannot fail.
    let payload = rkyv::to_bytes::<rancor::Error>(value).expect("rkyv serialization of owned data");
    let mut out = Vec::with_capacity(ENVELOPE_BYTES + payload.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Checks the envelope of `bytes` (stored at `key`) and returns the payload
/// copied into aligned memory.
fn open_envelope(key: &[u8], bytes: &[u8]) -> Result<AlignedVec, StorageError> {
    if bytes.len() < ENVELOPE_BYTES {
        return Err(StorageError::corrupt(
            key,
            format!("value is {} bytes, shorter than its header", bytes.len()),
        ));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(StorageError::corrupt(
            key,
            format!(
                "unknown format version {} (this build reads {FORMAT_V1})",
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
    let aligned = open_envelope(key, bytes)?;
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|e| StorageError::corrupt(key, format!("invalid archive: {e}")))
}

/// Checks a value stored at `key` and hands its validated archive to `f`,
/// without deserializing (used for page images).
pub(crate) fn with_archived<A, R>(
    key: &[u8],
    bytes: &[u8],
    f: impl FnOnce(&A) -> Result<R, StorageError>,
) -> Result<R, StorageError>
where
    A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let aligned = open_envelope(key, bytes)?;
    let archived = rkyv::access::<A, rancor::Error>(&aligned)
        .map_err(|e| StorageError::corrupt(key, format!("invalid archive: {e}")))?;
    f(archived)
}
