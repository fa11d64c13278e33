//! Errors of the data-format parsers.
//!
//! Two directions, two types: a [`ParamError`] is a bad parameter list a
//! peer sent to the device server (it becomes CHECK CONDITION sense); a
//! [`DecodeError`] is data-in from a target the initiator could not read.

use crate::sense::{self, Sense};

/// A parameter list (MODE SELECT, PERSISTENT RESERVE OUT, UNMAP, SET TARGET
/// PORT GROUPS) the device server rejects.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ParamError {
    /// 1a/00: the list is shorter (or longer) than its own headers say.
    #[error("parameter list length error")]
    LengthError,
    /// 26/00 at the given byte (and bit) of the parameter list.
    #[error("invalid field in parameter list at byte {byte}")]
    InvalidField { byte: u16, bit: Option<u8> },
}

impl ParamError {
    pub(crate) const fn at(byte: usize) -> ParamError {
        ParamError::InvalidField {
            byte: byte as u16,
            bit: None,
        }
    }

    pub(crate) const fn at_bit(byte: usize, bit: u8) -> ParamError {
        ParamError::InvalidField {
            byte: byte as u16,
            bit: Some(bit),
        }
    }

    pub fn sense(&self) -> Sense {
        match *self {
            ParamError::LengthError => Sense::illegal_request(sense::PARAMETER_LIST_LENGTH_ERROR),
            ParamError::InvalidField { byte, bit } => {
                Sense::invalid_field_in_parameter_list(byte, bit)
            }
        }
    }
}

impl From<ParamError> for Sense {
    fn from(e: ParamError) -> Sense {
        e.sense()
    }
}

/// Data-in the initiator could not decode.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed part of the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// A field holds a value the format does not allow.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Fail with [`DecodeError::Truncated`] unless `b` holds `need` bytes.
pub(crate) fn need(b: &[u8], need: usize) -> Result<(), DecodeError> {
    if b.len() < need {
        Err(DecodeError::Truncated {
            need,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}
