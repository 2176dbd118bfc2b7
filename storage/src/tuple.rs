//! Order-preserving key encoding, a subset of the FoundationDB tuple layer.
//!
//! Strings are `0x02 bytes 0x00` with every `0x00` inside escaped as
//! `0x00 0xFF`; unsigned integers are `0x14 + n` followed by their `n`
//! big-endian bytes without leading zeros. Byte-wise (memcmp) order of the
//! encodings equals tuple order, and no encoded tuple is a prefix of a
//! different element, so `prefix..prefix+0xFF` is exactly the set of
//! tuples that extend `prefix`. The encoding matches FoundationDB's, so
//! `fdbcli` and the tuple tools of any FoundationDB binding can read the
//! keys of the future `fdb` backend.

/// One tuple element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem<'a> {
    /// A UTF-8 string (type code 0x02).
    Str(&'a str),
    /// An unsigned integer (type codes 0x14..=0x1c).
    Int(u64),
}

impl From<u64> for Elem<'_> {
    fn from(v: u64) -> Self {
        Elem::Int(v)
    }
}

impl<'a> From<&'a str> for Elem<'a> {
    fn from(v: &'a str) -> Self {
        Elem::Str(v)
    }
}

/// Appends the encoding of `elems` to `out`.
pub fn pack_into(out: &mut Vec<u8>, elems: &[Elem<'_>]) {
    for e in elems {
        match e {
            Elem::Str(s) => {
                out.push(0x02);
                for &b in s.as_bytes() {
                    out.push(b);
                    if b == 0 {
                        out.push(0xFF);
                    }
                }
                out.push(0x00);
            }
            Elem::Int(v) => {
                let n = (8 - v.leading_zeros() / 8) as usize;
                out.push(0x14 + n as u8);
                out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
            }
        }
    }
}

/// Decoded element, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedElem {
    /// A string (lossy if it was not UTF-8).
    Str(String),
    /// An unsigned integer.
    Int(u64),
}

/// Decodes a packed tuple. Returns `None` if the bytes are not a tuple this
/// module writes.
pub fn unpack(mut b: &[u8]) -> Option<Vec<OwnedElem>> {
    let mut out = Vec::new();
    while let Some((&code, rest)) = b.split_first() {
        b = rest;
        match code {
            0x02 => {
                let mut s = Vec::new();
                loop {
                    let (&c, rest) = b.split_first()?;
                    b = rest;
                    if c == 0 {
                        if b.first() == Some(&0xFF) {
                            s.push(0);
                            b = &b[1..];
                        } else {
                            break;
                        }
                    } else {
                        s.push(c);
                    }
                }
                out.push(OwnedElem::Str(String::from_utf8(s).ok()?));
            }
            0x14..=0x1c => {
                let n = (code - 0x14) as usize;
                if b.len() < n {
                    return None;
                }
                let mut buf = [0u8; 8];
                buf[8 - n..].copy_from_slice(&b[..n]);
                b = &b[n..];
                out.push(OwnedElem::Int(u64::from_be_bytes(buf)));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A human-readable form of a key: the tuple if it decodes, else hex.
pub fn printable(key: &[u8]) -> String {
    match unpack(key) {
        Some(elems) if !elems.is_empty() => {
            let parts: Vec<String> = elems
                .iter()
                .map(|e| match e {
                    OwnedElem::Str(s) => format!("{s:?}"),
                    OwnedElem::Int(i) => i.to_string(),
                })
                .collect();
            format!("({})", parts.join(", "))
        }
        _ => format!("0x{}", hex::encode(key)),
    }
}

/// The end of the range of all keys that extend `prefix` (exclusive).
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xFF);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut v = Vec::new();
        pack_into(&mut v, elems);
        v
    }

    proptest! {
        #[test]
        fn int_encoding_preserves_order(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), enc(&[Elem::Int(a)]).cmp(&enc(&[Elem::Int(b)])));
        }

        #[test]
        fn string_encoding_preserves_order_and_roundtrips(a in ".*", b in ".*", x: u64) {
            let ka = enc(&[Elem::Str(&a), Elem::Int(x)]);
            let kb = enc(&[Elem::Str(&b), Elem::Int(x)]);
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), ka.cmp(&kb));
            prop_assert_eq!(unpack(&ka).unwrap(), vec![OwnedElem::Str(a.clone()), OwnedElem::Int(x)]);
        }

        #[test]
        fn child_keys_stay_inside_prefix_range(a in "[a-c\\x00]{0,4}", b in "[a-c\\x00]{0,4}", x: u64) {
            let prefix = enc(&[Elem::Str(&a)]);
            let child = enc(&[Elem::Str(&b), Elem::Int(x)]);
            let inside = child.as_slice() > prefix.as_slice() && child < range_end(&prefix);
            prop_assert_eq!(inside, a == b);
        }
    }

    #[test]
    fn printable_shows_tuple() {
        let k = enc(&[Elem::Str("tern"), Elem::Int(1), Elem::Str("act")]);
        assert_eq!(printable(&k), "(\"tern\", 1, \"act\")");
        assert_eq!(printable(&[0xAB]), "0xab");
    }
}
