//! iSCSI PDU codec (RFC 7143), error recovery level 0.
//!
//! Pure and total: no I/O, no clocks, no panics on any input. Decoding a PDU and encoding it
//! again gives back the same bytes — reserved fields and pad bytes included — and opcodes or
//! field values RFC 7143 does not define survive as the raw numbers they arrived as.
//!
//! - [`Pdu`]: one PDU (typed [`Bhs`], raw AHS, data segment); [`Pdu::decode`] cuts PDUs off a
//!   byte stream (`Ok(None)` = need more bytes), [`Pdu::encode`] writes them.
//! - [`digest`]: CRC32C header/data digests.
//! - [`text`]: `key=value` text parameters of Login and Text PDUs, binary values.
//! - [`SerialNumber`]: RFC 1982 arithmetic for CmdSN, StatSN, DataSN, R2TSN.

pub mod bhs;
pub mod digest;
mod pdu;
mod serial;
pub mod text;
mod types;

pub use bhs::*;
pub use digest::Digests;
pub use pdu::{
    AhsRef, DecodeConfig, DecodeError, Pdu, DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
    MAX_DATA_SEGMENT_LENGTH,
};
pub use serial::SerialNumber;
pub use text::TextParams;
pub use types::*;
