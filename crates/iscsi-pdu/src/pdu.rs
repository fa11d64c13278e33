//! A whole PDU: BHS, AHS, header digest, data segment (padded), data digest — and the framing
//! decoder that cuts PDUs out of a byte stream.

use bytes::{BufMut, Bytes, BytesMut};

use crate::bhs::{Bhs, BHS_LEN};
use crate::digest::{crc32c, data_crc32c, Digests};
use crate::types::{AhsType, Opcode};

/// The largest data segment the 24-bit DataSegmentLength can describe.
pub const MAX_DATA_SEGMENT_LENGTH: u32 = (1 << 24) - 1;

/// RFC 7143 §6.2: MaxRecvDataSegmentLength is 8192 until negotiated otherwise, and login
/// PDUs are bound by it. Decoders start from this limit.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;

/// One iSCSI PDU.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    /// The Additional Header Segments, raw (a multiple of 4 bytes; see [`Pdu::ahs_segments`]).
    pub ahs: Bytes,
    /// The data segment without its padding.
    pub data: Bytes,
    /// What a peer put in reserved fields and padding, so that re-encoding a decoded PDU
    /// gives back its bytes exactly. `None` for PDUs we build (and for nearly every PDU a
    /// conforming peer sends).
    residual: Option<Box<Residual>>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Residual {
    /// The opcode the residual was taken from: it applies only while the header keeps it.
    opcode: Opcode,
    /// Received BHS XOR the BHS our encoder writes for the decoded fields: non-zero only in
    /// reserved fields and fixed bits.
    bhs_xor: [u8; BHS_LEN],
    /// The data segment's pad bytes as received.
    data_pad: [u8; 3],
}

/// How a connection decodes: the digests it negotiated and the largest data segment it
/// accepts (its own MaxRecvDataSegmentLength, declared to the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeConfig {
    pub digests: Digests,
    pub max_recv_data_segment_length: u32,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            digests: Digests::NONE,
            max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
        }
    }
}

/// Why bytes could not be decoded into a PDU.
///
/// [`DecodeError::is_fatal`] says whether the byte stream can still be trusted: after a fatal
/// error the connection must be closed (RFC 7143 §7.8: a header digest error means the
/// lengths cannot be believed). After a non-fatal one the PDU's bytes were consumed and the
/// receiver answers with a Reject that quotes [`DecodeError::rejected_header`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header digest error: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest { received: u32, computed: u32 },
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max} ({opcode})")]
    DataSegmentTooLong { opcode: Opcode, len: u32, max: u32 },
    #[error("data digest error: received {received:#010x}, computed {computed:#010x}")]
    DataDigest {
        header: Box<[u8; BHS_LEN]>,
        received: u32,
        computed: u32,
    },
    #[error("malformed AHS: {reason}")]
    BadAhs {
        header: Box<[u8; BHS_LEN]>,
        reason: &'static str,
    },
}

impl DecodeError {
    /// Whether the connection must be dropped (the stream cannot be resynchronised).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DecodeError::HeaderDigest { .. } | DecodeError::DataSegmentTooLong { .. }
        )
    }

    /// The BHS of the PDU to quote in a Reject, for non-fatal errors.
    pub fn rejected_header(&self) -> Option<&[u8; BHS_LEN]> {
        match self {
            DecodeError::DataDigest { header, .. } | DecodeError::BadAhs { header, .. } => {
                Some(header)
            }
            _ => None,
        }
    }
}

/// One Additional Header Segment, borrowed from a PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AhsRef<'a> {
    pub ahs_type: AhsType,
    /// AHS-specific byte followed by the AHS data (AHSLength bytes).
    pub specific: &'a [u8],
}

impl Pdu {
    /// A PDU with no AHS and no data.
    pub fn new(bhs: Bhs) -> Pdu {
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
            residual: None,
        }
    }

    /// A PDU with a data segment.
    pub fn with_data(bhs: Bhs, data: impl Into<Bytes>) -> Pdu {
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data: data.into(),
            residual: None,
        }
    }

    pub fn opcode(&self) -> Opcode {
        self.bhs.opcode()
    }

    /// Iterate the AHS entries. Entries were validated at decode time; a malformed tail in
    /// a locally built `ahs` simply ends the iteration.
    pub fn ahs_segments(&self) -> impl Iterator<Item = AhsRef<'_>> {
        AhsIter { rest: &self.ahs }
    }

    /// The full CDB: the 16 bytes of the BHS followed by an Extended CDB AHS, if any.
    pub fn full_cdb(&self) -> Option<Vec<u8>> {
        let Bhs::ScsiCommand(c) = &self.bhs else {
            return None;
        };
        let mut cdb = c.cdb.to_vec();
        for a in self.ahs_segments() {
            if a.ahs_type == AhsType::EXTENDED_CDB && !a.specific.is_empty() {
                cdb.extend_from_slice(&a.specific[1..]);
            }
        }
        Some(cdb)
    }

    /// Build the raw AHS region from (type, data-after-the-specific-byte) entries.
    pub fn build_ahs(entries: &[(AhsType, &[u8])]) -> Bytes {
        let mut out = BytesMut::new();
        for (t, d) in entries {
            let len = d.len() + 1;
            out.put_u16(len as u16);
            out.put_u8(t.0);
            out.put_u8(0);
            out.put_slice(d);
            while !out.len().is_multiple_of(4) {
                out.put_u8(0);
            }
        }
        out.freeze()
    }

    /// Bytes this PDU occupies on the wire with `digests`.
    pub fn encoded_len(&self, digests: Digests) -> usize {
        BHS_LEN
            + self.ahs.len()
            + if digests.header { 4 } else { 0 }
            + pad4(self.data.len())
            + if digests.data && !self.data.is_empty() {
                4
            } else {
                0
            }
    }

    /// Append the wire form to `out`.
    pub fn encode(&self, digests: Digests, out: &mut BytesMut) {
        out.reserve(self.encoded_len(digests));
        self.encode_header(digests, out);
        self.encode_data(digests, out);
    }

    /// Append BHS, AHS and header digest: everything up to the data segment. With
    /// [`Pdu::encode_data`] this lets a sender write a large data segment without copying it
    /// into the header buffer.
    pub fn encode_header(&self, digests: Digests, out: &mut BytesMut) {
        let start = out.len();
        let mut b = [0u8; BHS_LEN];
        // Lengths that do not fit their fields are a bug in the caller, not a peer's doing:
        // the ahs region is built by us and the data segment is bounded by
        // MaxRecvDataSegmentLength, both far below these limits.
        let ahs_words = (self.ahs.len() / 4).min(u8::MAX as usize) as u8;
        let data_len = (self.data.len() as u32).min(MAX_DATA_SEGMENT_LENGTH);
        self.bhs.encode(&mut b, ahs_words, data_len);
        if let Some(r) = &self.residual {
            if r.opcode == self.bhs.opcode() {
                for (x, y) in b.iter_mut().zip(r.bhs_xor.iter()) {
                    *x ^= *y;
                }
            }
        }
        out.put_slice(&b);
        out.put_slice(&self.ahs);
        if digests.header {
            let c = crc32c(&out[start..]);
            out.put_u32_le(c);
        }
    }

    /// Append the padded data segment and its digest.
    pub fn encode_data(&self, digests: Digests, out: &mut BytesMut) {
        if self.data.is_empty() {
            return;
        }
        out.put_slice(&self.data);
        let pad = self.pad_bytes();
        out.put_slice(pad);
        if digests.data {
            out.put_u32_le(data_crc32c(&self.data, pad));
        }
    }

    fn pad_bytes(&self) -> &[u8] {
        const ZERO: [u8; 3] = [0; 3];
        let n = pad4(self.data.len()) - self.data.len();
        match &self.residual {
            Some(r) => &r.data_pad[..n],
            None => &ZERO[..n],
        }
    }

    /// Cut one PDU off the front of `buf`. `Ok(None)` means more bytes are needed.
    ///
    /// The data segment is split off without copying. On a non-fatal error the PDU's bytes
    /// are consumed; on a fatal one `buf` is left as it was and must be discarded.
    pub fn decode(buf: &mut BytesMut, cfg: &DecodeConfig) -> Result<Option<Pdu>, DecodeError> {
        let Some(frame) = Frame::measure(buf, cfg)? else {
            return Ok(None);
        };
        let bytes = buf.split_to(frame.total).freeze();
        frame.build(bytes, cfg).map(Some)
    }

    /// Decode one PDU from the start of `buf`, returning it and the bytes it used. Copies the
    /// data segment; for tests, fuzzing and tools.
    pub fn decode_slice(
        buf: &[u8],
        cfg: &DecodeConfig,
    ) -> Result<Option<(Pdu, usize)>, DecodeError> {
        let Some(frame) = Frame::measure(buf, cfg)? else {
            return Ok(None);
        };
        let total = frame.total;
        let bytes = Bytes::copy_from_slice(&buf[..total]);
        frame.build(bytes, cfg).map(|p| Some((p, total)))
    }
}

/// The lengths of a PDU read from its BHS.
struct Frame {
    header: [u8; BHS_LEN],
    ahs_len: usize,
    data_len: usize,
    total: usize,
}

impl Frame {
    fn measure(buf: &[u8], cfg: &DecodeConfig) -> Result<Option<Frame>, DecodeError> {
        let Some(h) = buf.get(..BHS_LEN) else {
            return Ok(None);
        };
        let mut header = [0u8; BHS_LEN];
        header.copy_from_slice(h);
        let ahs_len = header[4] as usize * 4;
        let data_len = u32::from_be_bytes([0, header[5], header[6], header[7]]);
        if data_len > cfg.max_recv_data_segment_length {
            return Err(DecodeError::DataSegmentTooLong {
                opcode: Opcode(header[0] & 0x3f),
                len: data_len,
                max: cfg.max_recv_data_segment_length,
            });
        }
        let data_len = data_len as usize;
        let hd = if cfg.digests.header { 4 } else { 0 };
        let dd = if cfg.digests.data && data_len > 0 {
            4
        } else {
            0
        };
        let total = BHS_LEN + ahs_len + hd + pad4(data_len) + dd;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(Frame {
            header,
            ahs_len,
            data_len,
            total,
        }))
    }

    fn build(self, bytes: Bytes, cfg: &DecodeConfig) -> Result<Pdu, DecodeError> {
        let mut off = BHS_LEN + self.ahs_len;
        if cfg.digests.header {
            let received =
                u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
            let computed = crc32c(&bytes[..off]);
            if received != computed {
                return Err(DecodeError::HeaderDigest { received, computed });
            }
            off += 4;
        }
        let ahs = bytes.slice(BHS_LEN..BHS_LEN + self.ahs_len);
        if let Err(reason) = validate_ahs(&ahs) {
            return Err(DecodeError::BadAhs {
                header: Box::new(self.header),
                reason,
            });
        }
        let data = bytes.slice(off..off + self.data_len);
        let padded = pad4(self.data_len);
        let pad = &bytes[off + self.data_len..off + padded];
        if cfg.digests.data && self.data_len > 0 {
            let d = off + padded;
            let received = u32::from_le_bytes([bytes[d], bytes[d + 1], bytes[d + 2], bytes[d + 3]]);
            let computed = data_crc32c(&data, pad);
            if received != computed {
                return Err(DecodeError::DataDigest {
                    header: Box::new(self.header),
                    received,
                    computed,
                });
            }
        }

        let bhs = Bhs::decode(&self.header);
        let mut canonical = [0u8; BHS_LEN];
        bhs.encode(&mut canonical, self.header[4], self.data_len as u32);
        let mut data_pad = [0u8; 3];
        data_pad[..pad.len()].copy_from_slice(pad);
        let residual = if canonical != self.header || data_pad != [0; 3] {
            let mut bhs_xor = [0u8; BHS_LEN];
            for i in 0..BHS_LEN {
                bhs_xor[i] = canonical[i] ^ self.header[i];
            }
            Some(Box::new(Residual {
                opcode: bhs.opcode(),
                bhs_xor,
                data_pad,
            }))
        } else {
            None
        };
        Ok(Pdu {
            bhs,
            ahs,
            data,
            residual,
        })
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn validate_ahs(mut rest: &[u8]) -> Result<(), &'static str> {
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("truncated AHS header");
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let total = pad4(3 + len);
        if len == 0 {
            return Err("AHSLength of zero");
        }
        if total > rest.len() {
            return Err("AHSLength runs past TotalAHSLength");
        }
        rest = &rest[total..];
    }
    Ok(())
}

struct AhsIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AhsIter<'a> {
    type Item = AhsRef<'a>;
    fn next(&mut self) -> Option<AhsRef<'a>> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u16::from_be_bytes([self.rest[0], self.rest[1]]) as usize;
        let total = pad4(3 + len);
        if len == 0 || total > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let item = AhsRef {
            ahs_type: AhsType(self.rest[2]),
            specific: &self.rest[3..3 + len],
        };
        self.rest = &self.rest[total..];
        Some(item)
    }
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Pdu");
        d.field("bhs", &self.bhs);
        if !self.ahs.is_empty() {
            d.field("ahs_len", &self.ahs.len());
        }
        d.field("data_len", &self.data.len());
        if self.residual.is_some() {
            d.field("residual", &true);
        }
        d.finish()
    }
}
