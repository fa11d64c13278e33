//! REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35), and its
//! construction from the command table of [`crate::cdb::CommandType`].

use crate::cdb::{CdbError, CommandType, OpCode};
use crate::codec::{be16, be32, set_be32, PutBe};
use crate::error::{need, DecodeError};

/// Length of a command timeouts descriptor's body (DESCRIPTOR LENGTH).
const TIMEOUTS_DESCRIPTOR_LEN: u16 = 0x0a;

/// RECOMMENDED COMMAND TIMEOUT we report, in seconds: every command is
/// bounded by backend I/O, a minute is generous for any of them.
const RECOMMENDED_TIMEOUT_SECS: u32 = 60;

/// Command timeouts descriptor (SPC-4 6.35.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CommandTimeouts {
    pub command_specific: u8,
    pub nominal: u32,
    pub recommended: u32,
}

impl CommandTimeouts {
    fn put(&self, v: &mut Vec<u8>) {
        v.put_u16(TIMEOUTS_DESCRIPTOR_LEN);
        v.push(0);
        v.push(self.command_specific);
        v.put_u32(self.nominal);
        v.put_u32(self.recommended);
    }

    fn parse(b: &[u8], at: usize) -> Option<CommandTimeouts> {
        Some(CommandTimeouts {
            command_specific: *b.get(at + 3)?,
            nominal: be32(b, at + 4)?,
            recommended: be32(b, at + 8)?,
        })
    }
}

/// One command descriptor of the all-commands format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommandDescriptor {
    pub opcode: OpCode,
    pub service_action: u16,
    /// SERVACTV: the service action field is valid.
    pub servactv: bool,
    pub cdb_len: u16,
    /// Present when CTDP is set (the request had RCTD).
    pub timeouts: Option<CommandTimeouts>,
}

/// All-commands parameter data (REPORTING OPTIONS 000b).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SupportedOpcodes {
    pub descriptors: Vec<CommandDescriptor>,
}

impl SupportedOpcodes {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 20 * self.descriptors.len());
        v.put_u32(0); // COMMAND DATA LENGTH, patched below
        for d in &self.descriptors {
            v.push(d.opcode.0);
            v.push(0);
            v.put_u16(d.service_action);
            v.push(0);
            v.push((u8::from(d.timeouts.is_some()) << 1) | u8::from(d.servactv));
            v.put_u16(d.cdb_len);
            if let Some(t) = d.timeouts {
                t.put(&mut v);
            }
        }
        let n = (v.len() - 4) as u32;
        set_be32(&mut v, 0, n);
        v
    }

    /// Lenient: a descriptor cut by the allocation length is dropped.
    pub fn parse(b: &[u8]) -> Result<SupportedOpcodes, DecodeError> {
        need(b, 4)?;
        let end = b
            .len()
            .min(4usize.saturating_add(be32(b, 0).unwrap_or(0) as usize));
        let mut descriptors = Vec::new();
        let mut at = 4;
        while at + 8 <= end {
            let ctdp = b[at + 5] & 0x02 != 0;
            let len = if ctdp { 20 } else { 8 };
            if at + len > end {
                break;
            }
            descriptors.push(CommandDescriptor {
                opcode: OpCode(b[at]),
                service_action: be16(b, at + 2).unwrap_or(0),
                servactv: b[at + 5] & 0x01 != 0,
                cdb_len: be16(b, at + 6).unwrap_or(0),
                timeouts: if ctdp {
                    CommandTimeouts::parse(b, at + 8)
                } else {
                    None
                },
            });
            at += len;
        }
        Ok(SupportedOpcodes { descriptors })
    }
}

/// SUPPORT field of the one-command format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Support(pub u8);

impl Support {
    pub const NOT_AVAILABLE: Support = Support(0b000);
    pub const NOT_SUPPORTED: Support = Support(0b001);
    pub const SUPPORTED: Support = Support(0b011);
}

/// One-command parameter data (REPORTING OPTIONS 001b to 011b).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct OneCommand {
    pub support: Support,
    /// CDB USAGE DATA; empty when not supported.
    pub usage: Vec<u8>,
    pub timeouts: Option<CommandTimeouts>,
}

impl OneCommand {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.usage.len() + 12);
        v.push(0);
        v.push((u8::from(self.timeouts.is_some()) << 7) | (self.support.0 & 0x07));
        v.put_u16(self.usage.len() as u16);
        v.extend_from_slice(&self.usage);
        if let Some(t) = self.timeouts {
            t.put(&mut v);
        }
        v
    }

    pub fn parse(b: &[u8]) -> Result<OneCommand, DecodeError> {
        need(b, 4)?;
        let len = usize::from(be16(b, 2).unwrap_or(0));
        let usage_end = b.len().min(4 + len);
        let ctdp = b[1] & 0x80 != 0;
        Ok(OneCommand {
            support: Support(b[1] & 0x07),
            usage: b[4..usage_end].to_vec(),
            timeouts: if ctdp {
                CommandTimeouts::parse(b, 4 + len)
            } else {
                None
            },
        })
    }
}

fn timeouts(rctd: bool) -> Option<CommandTimeouts> {
    rctd.then_some(CommandTimeouts {
        command_specific: 0,
        nominal: 0,
        recommended: RECOMMENDED_TIMEOUT_SECS,
    })
}

/// The all-commands list of every command [`CommandType::ALL`] supports.
pub fn supported_opcodes(rctd: bool) -> SupportedOpcodes {
    SupportedOpcodes {
        descriptors: CommandType::ALL
            .iter()
            .map(|&t| CommandDescriptor {
                opcode: t.opcode(),
                service_action: t.service_action().map_or(0, u16::from),
                servactv: t.service_action().is_some(),
                cdb_len: t.cdb_len() as u16,
                timeouts: timeouts(rctd),
            })
            .collect(),
    }
}

/// Opcodes whose commands are told apart by a service action.
fn has_service_actions(op: OpCode) -> bool {
    CommandType::ALL
        .iter()
        .any(|t| t.opcode() == op && t.service_action().is_some())
}

/// Answer a one-command request (REPORTING OPTIONS 001b, 010b, 011b).
/// SPC-4 6.35.2: 001b for an opcode with service actions, or 010b for one
/// without, is INVALID FIELD IN CDB (pointing at REPORTING OPTIONS, not at
/// byte 1, which initiators would read as "command not supported").
pub fn one_command(
    options: u8,
    opcode: OpCode,
    service_action: u16,
    rctd: bool,
) -> Result<OneCommand, CdbError> {
    let with_sa = has_service_actions(opcode);
    let use_sa = match options {
        1 if with_sa => return Err(CdbError::field(2, 2)),
        1 => false,
        2 if !with_sa => return Err(CdbError::field(2, 2)),
        2 => true,
        3 => with_sa,
        _ => return Err(CdbError::field(2, 2)),
    };
    let found = CommandType::ALL.iter().find(|t| {
        t.opcode() == opcode
            && (!use_sa || t.service_action().map(u16::from) == Some(service_action))
    });
    Ok(match found {
        Some(t) => OneCommand {
            support: Support::SUPPORTED,
            usage: t.usage_data().to_vec(),
            timeouts: timeouts(rctd),
        },
        None => OneCommand {
            support: Support::NOT_SUPPORTED,
            usage: Vec::new(),
            timeouts: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn all_commands_fixture() {
        let all = supported_opcodes(false);
        let b = all.build();
        assert_eq!(be32(&b, 0), Some((8 * CommandType::ALL.len()) as u32));
        // First descriptor: TEST UNIT READY, 6 bytes, no service action.
        assert_eq!(&b[4..12], &[0x00, 0, 0, 0, 0, 0, 0, 6]);
        assert_eq!(SupportedOpcodes::parse(&b), Ok(all));
        let with_t = supported_opcodes(true);
        let b = with_t.build();
        assert_eq!(
            &b[4..24],
            &[0, 0, 0, 0, 0, 0x02, 0, 6, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60]
        );
        assert_eq!(SupportedOpcodes::parse(&b), Ok(with_t));
    }

    #[test]
    fn one_command_rules() {
        let r = one_command(1, OpCode::READ_10, 0, false).unwrap();
        assert_eq!(r.support, Support::SUPPORTED);
        assert_eq!(r.usage[1] & 0x18, 0x18, "DPO and FUA are honoured");
        assert_eq!(r.build()[..6], [0x00, 0x03, 0x00, 0x0a, 0x28, 0x18]);
        assert_eq!(
            one_command(1, OpCode::SERVICE_ACTION_IN_16, 0x10, false),
            Err(CdbError::field(2, 2))
        );
        assert_eq!(
            one_command(2, OpCode::READ_10, 0, false),
            Err(CdbError::field(2, 2))
        );
        let rc16 = one_command(2, OpCode::SERVICE_ACTION_IN_16, 0x10, true).unwrap();
        assert_eq!(rc16.support, Support::SUPPORTED);
        assert_eq!(&rc16.usage[..2], &[0x9e, 0x10]);
        assert_eq!(OneCommand::parse(&rc16.build()), Ok(rc16));
        let none = one_command(1, OpCode(0xc0), 0, false).unwrap();
        assert_eq!(none.support, Support::NOT_SUPPORTED);
        let bad_sa = one_command(2, OpCode::SERVICE_ACTION_IN_16, 0x1f, false).unwrap();
        assert_eq!(bad_sa.support, Support::NOT_SUPPORTED);
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SupportedOpcodes::parse(&b);
            let _ = OneCommand::parse(&b);
        }

        #[test]
        fn one_command_never_panics(o in any::<u8>(), op in any::<u8>(), sa in any::<u16>(), rctd in any::<bool>()) {
            if let Ok(r) = one_command(o, OpCode(op), sa, rctd) {
                prop_assert_eq!(OneCommand::parse(&r.build()), Ok(r));
            }
        }
    }
}
