//! SCSI for mpath: the vocabulary both ends of the wire share, and the
//! device server of a direct-access logical unit.
//!
//! The crate is pure: no sockets, files, clocks or threads. It knows
//! nothing about iSCSI beyond the names SPC gives iSCSI ports.
//!
//! - [`cdb`]: CDB parsing in two steps (opcode → [`cdb::CommandType`] →
//!   [`cdb::Command`]) and CDB builders for the initiator.
//! - [`sense`]: sense keys, named additional sense codes, fixed and
//!   descriptor sense encode/decode, and the `is_*` classification the
//!   initiator uses to tell path errors from target errors.
//! - Data formats, each with a builder and a total parser: [`inquiry`]
//!   (standard data and VPD pages), [`capacity`], [`luns`], [`alua`],
//!   [`mode`], [`opcodes`], [`provisioning`], [`pr`].
//! - [`lu`]: the SBC-3 device server ([`LogicalUnit`]) over a
//!   [`Backend`], with persistent reservations, ALUA and unit attentions.

pub mod alua;
pub mod capacity;
pub mod cdb;
mod codec;
pub mod error;
pub mod inquiry;
pub mod lu;
pub mod luns;
pub mod mode;
pub mod opcodes;
pub mod pr;
pub mod provisioning;
pub mod sense;

pub use alua::{AluaMode, AluaState, StpgPolicy};
pub use cdb::{CdbError, Command, CommandType, OpCode};
pub use error::{DecodeError, ParamError};
pub use lu::{
    Backend, LogicalUnit, LuConfig, LuConfigError, Nexus, Request, Response, Status,
    TargetPortGroup, TargetPorts, TaskAttribute,
};
pub use luns::Lun;
pub use sense::{Asc, Sense, SenseData, SenseFormat, SenseKey};

#[cfg(any(test, feature = "mem"))]
pub use lu::mem::MemBackend;
