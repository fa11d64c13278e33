//! NBD wire format: constants and the fixed-size messages (fixed newstyle handshake, simple
//! replies). Names follow the protocol document (`doc/proto.md` of the reference
//! implementation).

use bytes::{Buf, BufMut, BytesMut};

/// "NBDMAGIC": the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation; also the magic of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;

// Information types of NBD_REP_INFO (and requested in NBD_OPT_INFO/GO).
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Length of the zeroes after NBD_OPT_EXPORT_NAME's reply, unless NO_ZEROES was agreed.
pub const EXPORT_NAME_PAD: usize = 124;

/// The server's first message: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// Header of an option the client sends (its data follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub const LEN: usize = 16;

    pub fn decode(b: &[u8; Self::LEN]) -> OptionHeader {
        let mut b = &b[..];
        OptionHeader {
            magic: b.get_u64(),
            option: b.get_u32(),
            len: b.get_u32(),
        }
    }
}

/// An option reply with its data.
pub fn option_reply(out: &mut BytesMut, option: u32, reply: u32, data: &[u8]) {
    out.put_u64(REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// A transmission-phase request header (a WRITE's data follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub magic: u32,
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub const LEN: usize = 28;

    pub fn decode(b: &[u8; Self::LEN]) -> Request {
        let mut b = &b[..];
        Request {
            magic: b.get_u32(),
            flags: b.get_u16(),
            kind: b.get_u16(),
            cookie: b.get_u64(),
            offset: b.get_u64(),
            len: b.get_u32(),
        }
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let mut w = &mut b[..];
        w.put_u32(self.magic);
        w.put_u16(self.flags);
        w.put_u16(self.kind);
        w.put_u64(self.cookie);
        w.put_u64(self.offset);
        w.put_u32(self.len);
        b
    }
}

/// A simple reply header (a successful READ's data follows).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut w = &mut b[..];
    w.put_u32(SIMPLE_REPLY_MAGIC);
    w.put_u32(error);
    w.put_u64(cookie);
    b
}

/// The name of a command, for logs.
pub fn command_name(kind: u16) -> String {
    match kind {
        CMD_READ => "READ".into(),
        CMD_WRITE => "WRITE".into(),
        CMD_DISC => "DISC".into(),
        CMD_FLUSH => "FLUSH".into(),
        CMD_TRIM => "TRIM".into(),
        5 => "CACHE".into(),
        CMD_WRITE_ZEROES => "WRITE_ZEROES".into(),
        7 => "BLOCK_STATUS".into(),
        8 => "RESIZE".into(),
        k => format!("command {k:#x}"),
    }
}

/// The name of an option, for logs.
pub fn option_name(option: u32) -> String {
    match option {
        OPT_EXPORT_NAME => "EXPORT_NAME".into(),
        OPT_ABORT => "ABORT".into(),
        OPT_LIST => "LIST".into(),
        OPT_STARTTLS => "STARTTLS".into(),
        OPT_INFO => "INFO".into(),
        OPT_GO => "GO".into(),
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY".into(),
        9 => "BLOCK_SIZE".into(),
        10 => "LIST_META_CONTEXT".into(),
        11 => "SET_META_CONTEXT".into(),
        12 => "EXTENDED_HEADERS".into(),
        o => format!("option {o:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            magic: REQUEST_MAGIC,
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            len: 512,
        };
        let b = r.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b), r);
    }

    #[test]
    fn greeting_bytes() {
        assert_eq!(&greeting()[..8], b"NBDMAGIC");
        assert_eq!(&greeting()[8..16], b"IHAVEOPT");
        assert_eq!(&greeting()[16..], &[0, 3]);
    }
}
