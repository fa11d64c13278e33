//! Block operations into SCSI commands: READ(16), WRITE(16) (FUA), SYNCHRONIZE CACHE(16),
//! UNMAP, WRITE SAME(16); split at the LU's limits.

use block::{BlockOp, ByteOffset, DataPhase, DeviceInfo, IoError, IoErrorKind, ScsiRequest};
use bytes::Bytes;
use scsi::cdb::{build, Cdb};

use crate::config::IoLimits;

/// One SCSI command, kept whole so that each attempt on a path is a cheap copy (the CDB is
/// 16 bytes inline, the data reference-counted): the request a failed attempt hands back.
#[derive(Clone, Debug)]
pub(crate) struct Cmd {
    pub cdb: Cdb,
    pub data: DataPhase,
    /// Bytes on the wire, for the selectors.
    pub bytes: u64,
    /// The blocks the command changes (LBA, count), for the stale-write fence.
    pub modifies: Option<(u64, u64)>,
}

impl Cmd {
    fn new(cdb: Cdb, data: DataPhase) -> Cmd {
        let bytes = match &data {
            DataPhase::None => 0,
            DataPhase::In { len } => u64::from(*len),
            DataPhase::Out(b) => b.len() as u64,
        };
        Cmd {
            cdb,
            data,
            bytes,
            modifies: None,
        }
    }

    /// A READ: it changes nothing, so it may be hedged (issued on a second path while
    /// the first attempt is outstanding).
    #[inline]
    pub fn is_read(&self) -> bool {
        matches!(self.data, DataPhase::In { .. }) && self.modifies.is_none()
    }

    fn modifying(mut self, lba: u64, blocks: u32) -> Cmd {
        self.modifies = Some((lba, u64::from(blocks)));
        self
    }

    pub fn request(&self) -> ScsiRequest {
        ScsiRequest {
            cdb: Bytes::copy_from_slice(self.cdb.as_bytes()),
            data: self.data.clone(),
        }
    }
}

/// What a block operation becomes.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Nothing to send: a zero-length read or write, or a flush without a volatile cache.
    Nothing,
    One(Cmd),
    /// Chunks issued concurrently; for reads, concatenated in order.
    Split(Vec<Cmd>),
}

/// The plan, and a SYNCHRONIZE CACHE to issue after it succeeds (FUA emulation).
#[derive(Debug)]
pub(crate) struct Planned {
    pub plan: Plan,
    pub then_sync: Option<Cmd>,
}

fn invalid(detail: String) -> IoError {
    IoError::new(IoErrorKind::Invalid, detail)
}

/// Check that [offset, offset + len) is block-aligned and inside the device; the range in
/// blocks.
fn range(
    info: &DeviceInfo,
    size: u64,
    offset: ByteOffset,
    len: u64,
) -> Result<(u64, u64), IoError> {
    let bs = u64::from(info.block_size);
    if !offset.0.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(invalid(format!(
            "offset {} length {len} not aligned to the {bs}-byte block size",
            offset.0
        )));
    }
    match offset.0.checked_add(len) {
        Some(end) if end <= size => Ok((offset.0 / bs, len / bs)),
        _ => Err(invalid(format!(
            "offset {} length {len} beyond the device's {size} bytes",
            offset.0
        ))),
    }
}

/// Split `blocks` starting at `lba` into runs of at most `max` blocks.
fn runs(lba: u64, blocks: u64, max: u32) -> impl Iterator<Item = (u64, u32)> {
    let max = u64::from(max.max(1));
    (0..blocks.div_ceil(max)).map(move |i| {
        let start = lba + i * max;
        let n = (blocks - i * max).min(max);
        (start, n as u32)
    })
}

fn collect(cmds: Vec<Cmd>) -> Plan {
    match cmds.len() {
        0 => Plan::Nothing,
        1 => cmds.into_iter().next().map_or(Plan::Nothing, Plan::One),
        _ => Plan::Split(cmds),
    }
}

/// Zeroes for writes of zeroes when WRITE SAME is not available, and for WRITE SAME's
/// one-block pattern: shared, never copied.
fn zeroes(len: usize) -> Bytes {
    Bytes::from(vec![0u8; len])
}

/// Turn `op` into commands for an LU with these facts and limits, sized `info.size`.
#[cfg(test)]
pub(crate) fn plan(op: &BlockOp, info: &DeviceInfo, limits: &IoLimits) -> Result<Planned, IoError> {
    plan_sized(op, info, info.size, limits)
}

/// Turn `op` into commands for an LU with these facts and limits, whose capacity is now
/// `size` bytes (it may have changed since `info` was taken: a resize).
pub(crate) fn plan_sized(
    op: &BlockOp,
    info: &DeviceInfo,
    size: u64,
    limits: &IoLimits,
) -> Result<Planned, IoError> {
    let bs = info.block_size;
    // Blocks per READ/WRITE: the maximum transfer, at least one block.
    let max_rw = (info.max_transfer / bs).max(1);
    let plan = match op {
        BlockOp::Read { offset, len } => {
            let (lba, blocks) = range(info, size, *offset, u64::from(*len))?;
            if blocks == 0 {
                Plan::Nothing
            } else if blocks <= u64::from(max_rw) {
                Plan::One(Cmd::new(
                    build::read_16(lba, blocks as u32, false),
                    DataPhase::In { len: *len },
                ))
            } else {
                collect(
                    runs(lba, blocks, max_rw)
                        .map(|(l, n)| {
                            Cmd::new(build::read_16(l, n, false), DataPhase::In { len: n * bs })
                        })
                        .collect(),
                )
            }
        }
        BlockOp::Write { offset, data, fua } => {
            let (lba, blocks) = range(info, size, *offset, data.len() as u64)?;
            // FUA means something only with a volatile cache; when the LU does not honour
            // the bit, a SYNCHRONIZE CACHE over the range follows instead.
            let fua_bit = *fua && limits.fua;
            let then_sync = (*fua && !limits.fua && info.volatile_write_cache && blocks > 0)
                .then(|| sync_range(lba, blocks));
            let plan = if blocks == 0 {
                Plan::Nothing
            } else if blocks <= u64::from(max_rw) {
                Plan::One(
                    Cmd::new(
                        build::write_16(lba, blocks as u32, fua_bit),
                        DataPhase::Out(data.clone()),
                    )
                    .modifying(lba, blocks as u32),
                )
            } else {
                let mut at = 0usize;
                collect(
                    runs(lba, blocks, max_rw)
                        .map(|(l, n)| {
                            let len = (n * bs) as usize;
                            let chunk = data.slice(at..at + len);
                            at += len;
                            Cmd::new(build::write_16(l, n, fua_bit), DataPhase::Out(chunk))
                                .modifying(l, n)
                        })
                        .collect(),
                )
            };
            return Ok(Planned { plan, then_sync });
        }
        BlockOp::Flush => {
            if info.volatile_write_cache {
                // LBA 0, NUMBER OF LOGICAL BLOCKS 0: the whole medium. The LU's cache is
                // one cache whatever port a write came through (see docs/engine.md).
                Plan::One(Cmd::new(
                    build::synchronize_cache_16(0, 0, false),
                    DataPhase::None,
                ))
            } else {
                Plan::Nothing
            }
        }
        BlockOp::Discard { offset, len } => {
            if !info.supports_discard {
                return Err(invalid("the device does not support discard".into()));
            }
            let (lba, blocks) = range(info, size, *offset, *len)?;
            collect(
                runs(lba, blocks, limits.max_unmap_blocks)
                    .map(|(l, n)| {
                        let params = build::unmap_params(&[(l, n)]);
                        Cmd::new(
                            build::unmap(params.len() as u16),
                            DataPhase::Out(Bytes::from(params)),
                        )
                        .modifying(l, n)
                    })
                    .collect(),
            )
        }
        BlockOp::WriteZeroes {
            offset,
            len,
            may_unmap,
        } => {
            let (lba, blocks) = range(info, size, *offset, *len)?;
            if info.supports_write_zeroes {
                let pattern = zeroes(bs as usize);
                collect(
                    runs(lba, blocks, limits.max_write_same_blocks)
                        .map(|(l, n)| {
                            let data = if limits.write_same_ndob {
                                DataPhase::None
                            } else {
                                DataPhase::Out(pattern.clone())
                            };
                            Cmd::new(
                                build::write_same_16(l, n, *may_unmap, limits.write_same_ndob),
                                data,
                            )
                            .modifying(l, n)
                        })
                        .collect(),
                )
            } else {
                // No WRITE SAME: write zeroes, one shared buffer for every chunk.
                let buf = zeroes((max_rw.min(blocks.max(1) as u32) * bs) as usize);
                collect(
                    runs(lba, blocks, max_rw)
                        .map(|(l, n)| {
                            Cmd::new(
                                build::write_16(l, n, false),
                                DataPhase::Out(buf.slice(..(n * bs) as usize)),
                            )
                            .modifying(l, n)
                        })
                        .collect(),
                )
            }
        }
    };
    Ok(Planned {
        plan,
        then_sync: None,
    })
}

/// SYNCHRONIZE CACHE(16) over a range (the whole medium when it does not fit the CDB).
fn sync_range(lba: u64, blocks: u64) -> Cmd {
    let cdb = match u32::try_from(blocks) {
        Ok(n) => build::synchronize_cache_16(lba, n, false),
        Err(_) => build::synchronize_cache_16(0, 0, false),
    };
    Cmd::new(cdb, DataPhase::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scsi::cdb::{Command, ReadWrite, WriteSameParams};

    fn info() -> DeviceInfo {
        DeviceInfo {
            size: 1 << 20,
            block_size: 512,
            physical_block_size: 512,
            max_transfer: 4096,
            supports_discard: true,
            supports_write_zeroes: true,
            volatile_write_cache: true,
        }
    }

    fn cmds(p: Planned) -> Vec<Cmd> {
        match p.plan {
            Plan::Nothing => vec![],
            Plan::One(c) => vec![c],
            Plan::Split(v) => v,
        }
    }

    fn parsed(c: &Cmd) -> Command {
        Command::parse(c.cdb.as_bytes()).unwrap()
    }

    #[test]
    fn read_split_at_max_transfer() {
        let op = BlockOp::Read {
            offset: ByteOffset(1024),
            len: 10 * 512,
        };
        let v = cmds(plan(&op, &info(), &IoLimits::default()).unwrap());
        assert_eq!(v.len(), 2);
        assert_eq!(
            parsed(&v[0]),
            Command::Read(ReadWrite {
                lba: 2,
                blocks: 8,
                dpo: false,
                fua: false
            })
        );
        assert_eq!(
            parsed(&v[1]),
            Command::Read(ReadWrite {
                lba: 10,
                blocks: 2,
                dpo: false,
                fua: false
            })
        );
        assert_eq!(v[1].data, DataPhase::In { len: 1024 });
    }

    #[test]
    fn write_fua_and_emulated_fua() {
        let data = Bytes::from(vec![7u8; 512]);
        let op = BlockOp::Write {
            offset: ByteOffset(0),
            data: data.clone(),
            fua: true,
        };
        let p = plan(&op, &info(), &IoLimits::default()).unwrap();
        assert!(p.then_sync.is_none());
        let v = cmds(p);
        assert!(matches!(
            parsed(&v[0]),
            Command::Write(ReadWrite { fua: true, .. })
        ));
        let no_fua = IoLimits {
            fua: false,
            ..IoLimits::default()
        };
        let p = plan(&op, &info(), &no_fua).unwrap();
        assert_eq!(
            p.then_sync.as_ref().map(parsed),
            Some(Command::SynchronizeCache {
                lba: 0,
                blocks: 1,
                immed: false
            })
        );
        assert!(matches!(
            parsed(&cmds(p)[0]),
            Command::Write(ReadWrite { fua: false, .. })
        ));
    }

    #[test]
    fn flush_only_with_a_volatile_cache() {
        let v = cmds(plan(&BlockOp::Flush, &info(), &IoLimits::default()).unwrap());
        assert_eq!(
            parsed(&v[0]),
            Command::SynchronizeCache {
                lba: 0,
                blocks: 0,
                immed: false
            }
        );
        let wt = DeviceInfo {
            volatile_write_cache: false,
            ..info()
        };
        assert!(cmds(plan(&BlockOp::Flush, &wt, &IoLimits::default()).unwrap()).is_empty());
    }

    #[test]
    fn discard_and_write_zeroes() {
        let lim = IoLimits {
            max_unmap_blocks: 100,
            max_write_same_blocks: 100,
            ..IoLimits::default()
        };
        let op = BlockOp::Discard {
            offset: ByteOffset(0),
            len: 150 * 512,
        };
        let v = cmds(plan(&op, &info(), &lim).unwrap());
        assert_eq!(v.len(), 2);
        assert!(matches!(
            parsed(&v[0]),
            Command::Unmap { param_len: 24, .. }
        ));
        let op = BlockOp::WriteZeroes {
            offset: ByteOffset(512),
            len: 150 * 512,
            may_unmap: true,
        };
        let v = cmds(plan(&op, &info(), &lim).unwrap());
        assert_eq!(
            parsed(&v[1]),
            Command::WriteSame(WriteSameParams {
                lba: 101,
                blocks: 50,
                unmap: true,
                anchor: false,
                ndob: false
            })
        );
        assert_eq!(v[1].bytes, 512);
        let no_ws = DeviceInfo {
            supports_write_zeroes: false,
            ..info()
        };
        let v = cmds(plan(&op, &no_ws, &lim).unwrap());
        assert!(v.iter().all(|c| matches!(parsed(c), Command::Write(_))));
        assert_eq!(v.iter().map(|c| c.bytes).sum::<u64>(), 150 * 512);
    }

    #[test]
    fn invalid_requests() {
        let lim = IoLimits::default();
        let bad = [
            BlockOp::Read {
                offset: ByteOffset(100),
                len: 512,
            },
            BlockOp::Read {
                offset: ByteOffset(1 << 20),
                len: 512,
            },
            BlockOp::Read {
                offset: ByteOffset(u64::MAX - 511),
                len: 512,
            },
            BlockOp::Write {
                offset: ByteOffset(0),
                data: Bytes::from_static(&[0; 100]),
                fua: false,
            },
        ];
        for op in bad {
            assert_eq!(
                plan(&op, &info(), &lim).unwrap_err().kind,
                IoErrorKind::Invalid,
                "{op:?}"
            );
        }
        let no_discard = DeviceInfo {
            supports_discard: false,
            ..info()
        };
        let op = BlockOp::Discard {
            offset: ByteOffset(0),
            len: 512,
        };
        assert!(plan(&op, &no_discard, &lim).is_err());
        let empty = BlockOp::Read {
            offset: ByteOffset(0),
            len: 0,
        };
        assert!(matches!(
            plan(&empty, &info(), &lim).unwrap().plan,
            Plan::Nothing
        ));
    }
}
