//! Byte ranges → block operations: what both exports share.
//!
//! NBD clients and the FUSE kernel module ask for byte ranges; a [`BlockDevice`] takes
//! block-aligned operations of at most its maximum transfer. [`BlockIo`] bridges the two:
//!
//! - reads are widened to whole blocks and the requested bytes sliced out (no copy);
//! - an unaligned write or write-zeroes reads the partial edge blocks, patches them and
//!   writes whole blocks back (read-modify-write);
//! - transfers larger than the device's maximum are split;
//! - discard is shrunk to the whole blocks inside the range (it is only a hint);
//! - write-zeroes on a device without it is emulated with writes of a shared zero buffer.
//!
//! **Concurrency of read-modify-write.** Two writes that touch the same block while one of
//! them is a read-modify-write could lose data: the RMW reads the block, the other write
//! lands, the RMW writes back the stale bytes around its own. So every write takes a range
//! lock over the blocks it covers: a plain aligned write takes it *shared* (aligned writes
//! never need each other's exclusion: the device orders them), an RMW takes it *exclusive*.
//! Waiters are served in arrival order among conflicting requests, so a stream of aligned
//! writes cannot starve an RMW. Reads take no lock: a read racing a write may see either
//! version of a block, as on any disk.

use std::sync::{Arc, Mutex};

use block::{BlockDevice, BlockOp, ByteOffset, DeviceInfo, IoError, IoErrorKind, Outcome};
use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

/// Largest zero buffer kept for emulated write-zeroes: one allocation shared by every chunk;
/// 1 MiB keeps the number of writes small without holding much memory.
const ZERO_BUF_LEN: usize = 1 << 20;

/// Byte-range I/O over one device (see the module docs).
pub struct BlockIo<D> {
    device: Arc<D>,
    locks: RangeLocks,
}

impl<D: BlockDevice> BlockIo<D> {
    pub fn new(device: Arc<D>) -> BlockIo<D> {
        BlockIo {
            device,
            locks: RangeLocks::default(),
        }
    }

    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// Read `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let info = self.device.info();
        check_range(&info, offset, u64::from(len))?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let (start, end) = widen(&info, offset, u64::from(len));
        let data = self.read_aligned(&info, start, end - start).await?;
        let from = (offset - start) as usize;
        Ok(data.slice(from..from + len as usize))
    }

    /// Write `data` at `offset`; with `fua`, durable when this returns.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        let info = self.device.info();
        let len = data.len() as u64;
        check_range(&info, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = widen(&info, offset, len);
        if start == offset && end == offset + len {
            let _guard = self.locks.lock(start, end, false).await;
            return self.write_aligned(&info, start, data, fua).await;
        }
        let _guard = self.locks.lock(start, end, true).await;
        let mut buf = BytesMut::zeroed((end - start) as usize);
        self.fill_edges(&info, &mut buf, start, offset, len).await?;
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(&data);
        self.write_aligned(&info, start, buf.freeze(), fua).await
    }

    /// Everything completed before this call is on stable storage when it returns.
    pub async fn flush(&self) -> Result<(), IoError> {
        self.device.submit(BlockOp::Flush).await.map(|_| ())
    }

    /// Hint that `[offset, offset + len)` is no longer needed: the whole blocks inside it are
    /// discarded, when the device supports discard; otherwise nothing happens.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let info = self.device.info();
        check_range(&info, offset, len)?;
        let bs = u64::from(info.block_size);
        let start = offset.next_multiple_of(bs);
        let end = (offset + len) / bs * bs;
        if !info.supports_discard || start >= end {
            return Ok(());
        }
        let _guard = self.locks.lock(start, end, false).await;
        self.device
            .submit(BlockOp::Discard {
                offset: ByteOffset(start),
                len: end - start,
            })
            .await
            .map(|_| ())
    }

    /// Make `[offset, offset + len)` read back as zeroes; `may_unmap` lets the device
    /// deallocate the whole blocks inside it.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> Result<(), IoError> {
        let info = self.device.info();
        check_range(&info, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let bs = u64::from(info.block_size);
        let end = offset + len;
        let (outer_start, outer_end) = widen(&info, offset, len);
        let inner_start = offset.next_multiple_of(bs);
        let inner_end = end / bs * bs;
        let aligned = outer_start == offset && outer_end == end;
        let _guard = self.locks.lock(outer_start, outer_end, !aligned).await;
        if inner_start < inner_end {
            self.zero_aligned(&info, inner_start, inner_end - inner_start, may_unmap)
                .await?;
        }
        // The partial blocks at either edge: read, zero the bytes, write back.
        let head_end = inner_start.min(end);
        if offset < head_end {
            self.zero_partial(&info, offset, head_end).await?;
        }
        let tail_start = inner_end.max(head_end);
        if tail_start < end {
            self.zero_partial(&info, tail_start, end).await?;
        }
        Ok(())
    }

    /// Zero `[from, to)`, which lies inside one block; the caller holds the block exclusively.
    async fn zero_partial(&self, info: &DeviceInfo, from: u64, to: u64) -> Result<(), IoError> {
        let bs = u64::from(info.block_size);
        let block = from / bs * bs;
        let old = self.read_aligned(info, block, bs).await?;
        let mut buf = BytesMut::from(&old[..]);
        buf[(from - block) as usize..(to - block) as usize].fill(0);
        self.write_aligned(info, block, buf.freeze(), false).await
    }

    /// Copy into `buf` (covering `[start, start + buf.len())`) the current contents of the
    /// partial blocks at either end of `[offset, offset + len)`.
    async fn fill_edges(
        &self,
        info: &DeviceInfo,
        buf: &mut BytesMut,
        start: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), IoError> {
        let bs = u64::from(info.block_size);
        let end = start + buf.len() as u64;
        let head = !offset.is_multiple_of(bs);
        if head {
            let old = self.read_aligned(info, start, bs).await?;
            buf[..bs as usize].copy_from_slice(&old);
        }
        let tail_block = end - bs;
        // The tail block needs reading unless the write ends on a boundary, or the tail
        // block is the head block, already read.
        let tail_partial = !(offset + len).is_multiple_of(bs);
        if tail_partial && !(head && tail_block == start) {
            let old = self.read_aligned(info, tail_block, bs).await?;
            buf[(tail_block - start) as usize..].copy_from_slice(&old);
        }
        Ok(())
    }

    async fn read_aligned(
        &self,
        info: &DeviceInfo,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, IoError> {
        let chunk = max_chunk(info);
        if len <= chunk {
            return self.read_one(offset, len as u32).await;
        }
        let mut out = BytesMut::with_capacity(len as usize);
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk);
            out.extend_from_slice(&self.read_one(offset + at, n as u32).await?);
            at += n;
        }
        Ok(out.freeze())
    }

    async fn read_one(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let op = BlockOp::Read {
            offset: ByteOffset(offset),
            len,
        };
        match self.device.submit(op).await? {
            Outcome::Data(d) if d.len() == len as usize => Ok(d),
            Outcome::Data(d) => Err(IoError::new(
                IoErrorKind::Target,
                format!("read of {len} bytes at {offset} returned {} bytes", d.len()),
            )),
            Outcome::Done => Err(IoError::new(
                IoErrorKind::Target,
                format!("read of {len} bytes at {offset} returned no data"),
            )),
        }
    }

    async fn write_aligned(
        &self,
        info: &DeviceInfo,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), IoError> {
        let chunk = max_chunk(info) as usize;
        let mut at = 0;
        while at < data.len() {
            let n = (data.len() - at).min(chunk);
            let op = BlockOp::Write {
                offset: ByteOffset(offset + at as u64),
                data: data.slice(at..at + n),
                fua,
            };
            self.device.submit(op).await?;
            at += n;
        }
        Ok(())
    }

    async fn zero_aligned(
        &self,
        info: &DeviceInfo,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> Result<(), IoError> {
        if info.supports_write_zeroes {
            let op = BlockOp::WriteZeroes {
                offset: ByteOffset(offset),
                len,
                may_unmap,
            };
            return self.device.submit(op).await.map(|_| ());
        }
        let chunk = max_chunk(info).min(ZERO_BUF_LEN as u64);
        let zeroes = Bytes::from(vec![0u8; chunk.min(len) as usize]);
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk) as usize;
            let op = BlockOp::Write {
                offset: ByteOffset(offset + at),
                data: zeroes.slice(..n),
                fua: false,
            };
            self.device.submit(op).await?;
            at += n as u64;
        }
        Ok(())
    }
}

/// `[offset, offset + len)` lies inside the device.
pub fn check_range(info: &DeviceInfo, offset: u64, len: u64) -> Result<(), IoError> {
    match offset.checked_add(len) {
        Some(end) if end <= info.size => Ok(()),
        _ => Err(IoError::new(
            IoErrorKind::Invalid,
            format!(
                "offset {offset} length {len} beyond the device's {} bytes",
                info.size
            ),
        )),
    }
}

/// The whole blocks covering `[offset, offset + len)`.
fn widen(info: &DeviceInfo, offset: u64, len: u64) -> (u64, u64) {
    let bs = u64::from(info.block_size.max(1));
    (offset / bs * bs, (offset + len).next_multiple_of(bs))
}

/// Largest single read or write: the device's maximum transfer in whole blocks, at least one.
fn max_chunk(info: &DeviceInfo) -> u64 {
    let bs = u64::from(info.block_size.max(1));
    (u64::from(info.max_transfer) / bs * bs).max(bs)
}

/// Shared/exclusive locks over byte ranges, granted in arrival order among conflicting
/// requests (see the module docs). The table holds only writes in flight, so a linear scan
/// under a short mutex is cheaper than any tree.
#[derive(Default)]
struct RangeLocks {
    table: Mutex<LockTable>,
    released: Notify,
}

#[derive(Default)]
struct LockTable {
    next_id: u64,
    entries: Vec<LockEntry>,
}

struct LockEntry {
    id: u64,
    start: u64,
    end: u64,
    exclusive: bool,
    granted: bool,
}

impl LockTable {
    fn grantable(&self, id: u64) -> bool {
        let Some(me) = self.entries.iter().find(|e| e.id == id) else {
            return false;
        };
        !self.entries.iter().any(|o| {
            o.id != id
                && o.start < me.end
                && me.start < o.end
                && (o.exclusive || me.exclusive)
                && (o.granted || o.id < id)
        })
    }
}

struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.locks.table().entries.retain(|e| e.id != self.id);
        self.locks.released.notify_waiters();
    }
}

impl RangeLocks {
    fn table(&self) -> std::sync::MutexGuard<'_, LockTable> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let id = {
            let mut t = self.table();
            let id = t.next_id;
            t.next_id += 1;
            t.entries.push(LockEntry {
                id,
                start,
                end,
                exclusive,
                granted: false,
            });
            id
        };
        // From here on a cancelled wait still removes the entry.
        let guard = RangeGuard { locks: self, id };
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before checking, so a release between the check and the await
            // still wakes this waiter.
            notified.as_mut().enable();
            {
                let mut t = self.table();
                if t.grantable(id) {
                    if let Some(e) = t.entries.iter_mut().find(|e| e.id == id) {
                        e.granted = true;
                    }
                    return guard;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemDevice;
    use std::time::Duration;

    fn dev(bs: u32, max: u32) -> Arc<MemDevice> {
        Arc::new(MemDevice::builder(1 << 20, bs).max_transfer(max).build())
    }

    #[tokio::test]
    async fn unaligned_write_and_read() {
        let d = dev(512, 4096);
        let io = BlockIo::new(Arc::clone(&d));
        io.write(0, Bytes::from(vec![0xaa; 2048]), false)
            .await
            .unwrap();
        io.write(100, Bytes::from(vec![0x55; 1000]), false)
            .await
            .unwrap();
        let r = io.read(0, 2048).await.unwrap();
        assert!(r[..100].iter().all(|&b| b == 0xaa));
        assert!(r[100..1100].iter().all(|&b| b == 0x55));
        assert!(r[1100..].iter().all(|&b| b == 0xaa));
        // Inside one block, at both ends of it.
        io.write(1500, Bytes::from_static(b"xyz"), true)
            .await
            .unwrap();
        assert_eq!(&io.read(1499, 5).await.unwrap()[..], b"\xaaxyz\xaa");
        io.write(1535, Bytes::from_static(b"AB"), false)
            .await
            .unwrap();
        assert_eq!(&io.read(1535, 2).await.unwrap()[..], b"AB");
        // Every device op was aligned (MemDevice rejects anything else).
    }

    #[tokio::test]
    async fn splits_at_max_transfer() {
        let d = dev(512, 4096);
        let io = BlockIo::new(Arc::clone(&d));
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        io.write(7, Bytes::from(data.clone()), false).await.unwrap();
        assert_eq!(&io.read(7, 20000).await.unwrap()[..], &data[..]);
        assert!(d.stats().max_op_len <= 4096);
    }

    #[tokio::test]
    async fn write_zeroes_edges_and_emulation() {
        for native in [true, false] {
            let d = Arc::new(
                MemDevice::builder(1 << 16, 512)
                    .write_zeroes(native)
                    .max_transfer(2048)
                    .build(),
            );
            let io = BlockIo::new(Arc::clone(&d));
            io.write(0, Bytes::from(vec![0xff; 8192]), false)
                .await
                .unwrap();
            io.write_zeroes(300, 5000, true).await.unwrap();
            let r = io.read(0, 8192).await.unwrap();
            assert!(r[..300].iter().all(|&b| b == 0xff));
            assert!(r[300..5300].iter().all(|&b| b == 0));
            assert!(r[5300..].iter().all(|&b| b == 0xff));
            io.write_zeroes(10, 20, false).await.unwrap();
            let r = io.read(0, 40).await.unwrap();
            assert!(r[..10].iter().all(|&b| b == 0xff) && r[10..30].iter().all(|&b| b == 0));
            assert_eq!(d.stats().write_zeroes > 0, native);
        }
    }

    #[tokio::test]
    async fn discard_only_whole_blocks() {
        let d = dev(512, 4096);
        let io = BlockIo::new(Arc::clone(&d));
        io.discard(100, 300).await.unwrap();
        assert_eq!(d.stats().discards, 0);
        io.discard(100, 1500).await.unwrap();
        assert_eq!(d.stats().discards, 1);
    }

    #[tokio::test]
    async fn out_of_range_touches_nothing() {
        let d = dev(512, 4096);
        let io = BlockIo::new(Arc::clone(&d));
        let size = 1 << 20;
        assert!(io.read(size - 1, 2).await.is_err());
        assert!(io
            .write(size, Bytes::from_static(b"x"), false)
            .await
            .is_err());
        assert!(io.write_zeroes(u64::MAX, 2, false).await.is_err());
        assert_eq!(d.stats().ops, 0);
    }

    /// Overlapping unaligned writes racing aligned writes to the same blocks: every byte
    /// ends up from one of the writes that covered it, never the stale original.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_rmw_loses_nothing() {
        let d = Arc::new(
            MemDevice::builder(1 << 16, 512)
                .delay(Duration::from_micros(200))
                .build(),
        );
        let io = Arc::new(BlockIo::new(Arc::clone(&d)));
        for round in 0..20u8 {
            let mut tasks = Vec::new();
            // Aligned write of block 0 with pattern A, and an unaligned write of bytes
            // 100..200 with pattern B, at the same time.
            let a = round.wrapping_mul(2) | 1;
            let b = round.wrapping_mul(2) | 0x80;
            let io1 = Arc::clone(&io);
            tasks.push(tokio::spawn(async move {
                io1.write(0, Bytes::from(vec![a; 512]), false).await
            }));
            let io2 = Arc::clone(&io);
            tasks.push(tokio::spawn(async move {
                io2.write(100, Bytes::from(vec![b; 100]), false).await
            }));
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let r = io.read(0, 512).await.unwrap();
            // Either order is fine; the bytes outside 100..200 must be A either way.
            assert!(r[..100].iter().all(|&x| x == a), "round {round}: lost A");
            assert!(r[200..].iter().all(|&x| x == a), "round {round}: lost A");
            assert!(r[100..200].iter().all(|&x| x == a) || r[100..200].iter().all(|&x| x == b));
        }
    }

    #[tokio::test]
    async fn locks_grant_in_order() {
        let locks = Arc::new(RangeLocks::default());
        let shared = locks.lock(0, 512, false).await;
        let l2 = Arc::clone(&locks);
        let excl = tokio::spawn(async move {
            let _g = l2.lock(0, 1024, true).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A later shared request behind the waiting exclusive one waits too.
        let l3 = Arc::clone(&locks);
        let later = tokio::spawn(async move {
            let _g = l3.lock(512, 1024, false).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!excl.is_finished() && !later.is_finished());
        // A non-overlapping one does not.
        drop(locks.lock(4096, 8192, true).await);
        drop(shared);
        excl.await.unwrap();
        later.await.unwrap();
        assert!(locks.table().entries.is_empty());
    }
}
