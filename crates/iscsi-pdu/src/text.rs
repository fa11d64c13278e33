//! Text-format keys (RFC 7143 §6): `key=value` pairs, each terminated by a NUL byte, carried
//! in the data segment of Login and Text PDUs.
//!
//! Decoding is total. A data segment that does not end in NUL is accepted only when the
//! caller says more is to come (the C bit); the caller concatenates continued segments before
//! decoding.

use std::fmt;

/// Longest key name RFC 7143 §6.1 allows.
pub const MAX_KEY_LEN: usize = 63;

/// Longest value we accept. RFC 7143 limits most values to 255 bytes, but CHAP_C/CHAP_R may
/// carry up to 1024 binary bytes (2048 hex digits), and SendTargets replies carry long
/// `TargetAddress` lists one pair at a time: 8 KiB bounds all of these with room to spare.
pub const MAX_VALUE_LEN: usize = 8192;

/// An ordered list of key=value pairs. Order matters: the responder answers in the order
/// offered, and SendTargets replies interleave `TargetName` and `TargetAddress`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TextParams {
    pairs: Vec<(String, String)>,
}

/// Why a text data segment could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text pair {index} has no '=': {pair:?}")]
    MissingEquals { index: usize, pair: String },
    #[error("text pair {index} is not valid UTF-8")]
    NotUtf8 { index: usize },
    #[error("key {key:?} is empty or longer than {MAX_KEY_LEN} bytes")]
    BadKey { key: String },
    #[error("value of {key} is {len} bytes, longer than {MAX_VALUE_LEN}")]
    ValueTooLong { key: String, len: usize },
    #[error("text data segment does not end with NUL")]
    Unterminated,
}

impl TextParams {
    pub fn new() -> Self {
        TextParams::default()
    }

    /// Decode a complete data segment (all continuation segments already concatenated).
    pub fn decode(data: &[u8]) -> Result<TextParams, TextError> {
        let mut pairs = Vec::new();
        if data.is_empty() {
            return Ok(TextParams { pairs });
        }
        // Some initiators pad with extra NULs; empty entries between NULs are skipped.
        let body = match data.last() {
            Some(0) => &data[..data.len() - 1],
            _ => return Err(TextError::Unterminated),
        };
        for (index, raw) in body.split(|b| *b == 0).enumerate() {
            if raw.is_empty() {
                continue;
            }
            let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8 { index })?;
            let (k, v) = s.split_once('=').ok_or_else(|| TextError::MissingEquals {
                index,
                pair: s.chars().take(80).collect(),
            })?;
            if k.is_empty() || k.len() > MAX_KEY_LEN {
                return Err(TextError::BadKey {
                    key: k.chars().take(80).collect(),
                });
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(TextError::ValueTooLong {
                    key: k.to_string(),
                    len: v.len(),
                });
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(TextParams { pairs })
    }

    /// Encode as `key=value\0` pairs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        for (k, v) in &self.pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    pub fn encoded_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    }

    /// Append a pair (duplicates allowed, e.g. several `TargetAddress` keys).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((key.into(), value.into()));
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// How many times `key` appears (RFC 7143: a key offered twice is a protocol error).
    pub fn count(&self, key: &str) -> usize {
        self.pairs.iter().filter(|(k, _)| k == key).count()
    }

    /// Replace the value of `key`, or append it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.pairs.push((key.to_string(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(pos).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Append all pairs of `other`.
    pub fn extend(&mut self, other: TextParams) {
        self.pairs.extend(other.pairs);
    }
}

impl fmt::Debug for TextParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach a log: CHAP responses are derived from them, so hide them too.
        let mut m = f.debug_map();
        for (k, v) in &self.pairs {
            if k == "CHAP_R" || k == "CHAP_C" {
                m.entry(k, &"<hidden>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for TextParams {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        TextParams {
            pairs: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Why a binary value (`0x...` hex or `0b...` base64, RFC 7143 §6.1) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("binary value has neither a 0x nor a 0b prefix")]
    NoPrefix,
    #[error("invalid hex digit in binary value")]
    BadHex,
    #[error("invalid base64 in binary value")]
    BadBase64,
    #[error("binary value is empty")]
    Empty,
}

/// Decode an RFC 7143 binary value: `0x` + hex digits (odd count allowed: a leading zero
/// nibble is implied) or `0b` + base64.
pub fn decode_binary(s: &str) -> Result<Vec<u8>, BinaryError> {
    if let Some(body) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        decode_hex(body)
    } else if let Some(body) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        decode_base64(body)
    } else {
        Err(BinaryError::NoPrefix)
    }
}

/// Encode bytes as `0x` + lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn decode_hex(body: &str) -> Result<Vec<u8>, BinaryError> {
    if body.is_empty() {
        return Err(BinaryError::Empty);
    }
    let nibble = |c: u8| -> Result<u8, BinaryError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(BinaryError::BadHex),
        }
    };
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len().div_ceil(2));
    let mut i = 0;
    if bytes.len() % 2 == 1 {
        out.push(nibble(bytes[0])?);
        i = 1;
    }
    while i < bytes.len() {
        out.push((nibble(bytes[i])? << 4) | nibble(bytes[i + 1])?);
        i += 2;
    }
    Ok(out)
}

fn decode_base64(body: &str) -> Result<Vec<u8>, BinaryError> {
    let val = |c: u8| -> Result<u32, BinaryError> {
        match c {
            b'A'..=b'Z' => Ok((c - b'A') as u32),
            b'a'..=b'z' => Ok((c - b'a') as u32 + 26),
            b'0'..=b'9' => Ok((c - b'0') as u32 + 52),
            b'+' => Ok(62),
            b'/' => Ok(63),
            _ => Err(BinaryError::BadBase64),
        }
    };
    let trimmed = body.trim_end_matches('=');
    if trimmed.is_empty() {
        return Err(BinaryError::Empty);
    }
    let bytes = trimmed.as_bytes();
    if bytes.len() % 4 == 1 {
        return Err(BinaryError::BadBase64);
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_login_keys() {
        let data = b"InitiatorName=iqn.2024-01.test:i\0SessionType=Normal\0AuthMethod=None\0";
        let p = TextParams::decode(data).unwrap();
        assert_eq!(p.get("SessionType"), Some("Normal"));
        assert_eq!(p.len(), 3);
        assert_eq!(p.encode(), data.to_vec());
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(
            TextParams::decode(b"NoEquals\0"),
            Err(TextError::MissingEquals {
                index: 0,
                pair: "NoEquals".into()
            })
        );
        assert_eq!(TextParams::decode(b"A=1"), Err(TextError::Unterminated));
        assert!(TextParams::decode(b"=1\0").is_err());
        assert!(TextParams::decode(&[0xff, b'=', b'1', 0]).is_err());
    }

    #[test]
    fn value_may_contain_equals() {
        let p = TextParams::decode(b"X-a=b=c\0").unwrap();
        assert_eq!(p.get("X-a"), Some("b=c"));
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0a0B").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert!(decode_binary("1234").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert_eq!(encode_hex(&[0xde, 0xad]), "0xdead");
    }

    proptest! {
        #[test]
        fn decode_is_total(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TextParams::decode(&data);
        }

        #[test]
        fn binary_decode_is_total(s in ".{0,40}") {
            let _ = decode_binary(&s);
        }

        #[test]
        fn round_trip(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9_.-]{0,20}", "[ -~&&[^\\x00]]{0,40}"), 0..10)) {
            let p: TextParams = pairs.into_iter().collect();
            prop_assert_eq!(TextParams::decode(&p.encode()).unwrap(), p);
        }

        #[test]
        fn hex_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            prop_assert_eq!(decode_binary(&encode_hex(&bytes)).unwrap(), bytes);
        }
    }
}
