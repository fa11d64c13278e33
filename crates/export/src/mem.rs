//! An in-memory [`BlockDevice`] for tests and demos (feature `mem`).
//!
//! It is as strict as the multipath engine about what it accepts — block-aligned, inside the
//! device, reads and writes no longer than the maximum transfer — so tests of the exports
//! prove they only ever submit what a real map takes. It counts operations, can delay them
//! and can fail them on demand.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use block::{BlockDevice, BlockOp, DeviceInfo, IoError, IoErrorKind, Outcome};
use bytes::{Bytes, BytesMut};

/// Storage is allocated in chunks of this size on first write, so a large device that is
/// mostly never written (a fresh filesystem) costs little memory.
const CHUNK: usize = 64 * 1024;

/// Counters of what the device was asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub fua_writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    /// Longest read or write seen, in bytes.
    pub max_op_len: u64,
}

/// Builder for [`MemDevice`].
pub struct MemDeviceBuilder {
    info: DeviceInfo,
    delay: Duration,
}

impl MemDeviceBuilder {
    pub fn max_transfer(mut self, bytes: u32) -> Self {
        self.info.max_transfer = bytes;
        self
    }

    pub fn discard(mut self, on: bool) -> Self {
        self.info.supports_discard = on;
        self
    }

    pub fn write_zeroes(mut self, on: bool) -> Self {
        self.info.supports_write_zeroes = on;
        self
    }

    pub fn volatile_write_cache(mut self, on: bool) -> Self {
        self.info.volatile_write_cache = on;
        self
    }

    /// Every operation takes at least this long.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn build(self) -> MemDevice {
        MemDevice {
            info: self.info,
            delay: self.delay,
            chunks: Mutex::new(HashMap::new()),
            fault: Mutex::new(None),
            read_delays: Mutex::new(HashMap::new()),
            stats: Mutex::new(MemStats::default()),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        }
    }
}

/// A sparse in-memory block device.
pub struct MemDevice {
    info: DeviceInfo,
    delay: Duration,
    chunks: Mutex<HashMap<u64, Box<[u8]>>>,
    fault: Mutex<Option<IoError>>,
    read_delays: Mutex<HashMap<u64, Duration>>,
    stats: Mutex<MemStats>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// Largest transfer by default: 1 MiB, a typical iSCSI MaxBurstLength-sized limit.
const DEFAULT_MAX_TRANSFER: u32 = 1 << 20;

impl MemDevice {
    /// `size` bytes (a multiple of `block_size`), discard and write-zeroes supported, a
    /// volatile write cache, 1 MiB maximum transfer.
    pub fn new(size: u64, block_size: u32) -> MemDevice {
        Self::builder(size, block_size).build()
    }

    pub fn builder(size: u64, block_size: u32) -> MemDeviceBuilder {
        assert!(
            block_size.is_power_of_two() && size.is_multiple_of(u64::from(block_size)),
            "size {size} must be a multiple of the power-of-two block size {block_size}"
        );
        MemDeviceBuilder {
            info: DeviceInfo {
                size,
                block_size,
                physical_block_size: block_size,
                max_transfer: DEFAULT_MAX_TRANSFER,
                supports_discard: true,
                supports_write_zeroes: true,
                volatile_write_cache: true,
            },
            delay: Duration::ZERO,
        }
    }

    /// Fail every operation with `err` until cleared with `None`.
    pub fn set_fault(&self, err: Option<IoError>) {
        *lock(&self.fault) = err;
    }

    /// Reads starting at `offset` take `d` longer (to make completions come out of order).
    pub fn delay_reads_at(&self, offset: u64, d: Duration) {
        lock(&self.read_delays).insert(offset, d);
    }

    pub fn stats(&self) -> MemStats {
        lock(&self.stats).clone()
    }

    /// Most operations that were ever in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// The whole contents.
    pub fn contents(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.info.size as usize];
        self.copy_out(0, &mut out);
        out
    }

    /// Write the whole contents to a file (for `e2fsck` and friends).
    pub fn dump(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        let chunks = lock(&self.chunks);
        let mut at = 0u64;
        let zero = vec![0u8; CHUNK];
        while at < self.info.size {
            let n = (self.info.size - at).min(CHUNK as u64) as usize;
            match chunks.get(&(at / CHUNK as u64)) {
                Some(c) => f.write_all(&c[..n])?,
                None => f.write_all(&zero[..n])?,
            }
            at += n as u64;
        }
        f.flush()
    }

    fn copy_out(&self, offset: u64, out: &mut [u8]) {
        let chunks = lock(&self.chunks);
        let mut done = 0usize;
        while done < out.len() {
            let pos = offset + done as u64;
            let idx = pos / CHUNK as u64;
            let within = (pos % CHUNK as u64) as usize;
            let n = (CHUNK - within).min(out.len() - done);
            match chunks.get(&idx) {
                Some(c) => out[done..done + n].copy_from_slice(&c[within..within + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
    }

    fn copy_in(&self, offset: u64, data: Option<&[u8]>, len: u64) {
        let mut chunks = lock(&self.chunks);
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let idx = pos / CHUNK as u64;
            let within = (pos % CHUNK as u64) as usize;
            let n = (CHUNK - within).min((len - done) as usize);
            match data {
                Some(d) => {
                    let c = chunks
                        .entry(idx)
                        .or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
                    c[within..within + n].copy_from_slice(&d[done as usize..done as usize + n]);
                }
                None if within == 0 && n == CHUNK => {
                    chunks.remove(&idx);
                }
                None => {
                    if let Some(c) = chunks.get_mut(&idx) {
                        c[within..within + n].fill(0);
                    }
                }
            }
            done += n as u64;
        }
    }

    fn check(&self, offset: u64, len: u64, transfer: bool) -> Result<(), IoError> {
        let bs = u64::from(self.info.block_size);
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(IoError::new(
                IoErrorKind::Invalid,
                format!("offset {offset} length {len} not aligned to {bs}"),
            ));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.info.size) {
            return Err(IoError::new(
                IoErrorKind::Invalid,
                format!("offset {offset} length {len} beyond {}", self.info.size),
            ));
        }
        if transfer && len > u64::from(self.info.max_transfer) {
            return Err(IoError::new(
                IoErrorKind::Invalid,
                format!("{len} bytes exceed the maximum transfer"),
            ));
        }
        Ok(())
    }

    fn execute(&self, op: &BlockOp) -> Result<Outcome, IoError> {
        if let Some(e) = lock(&self.fault).clone() {
            return Err(e);
        }
        let mut st = lock(&self.stats);
        st.ops += 1;
        match op {
            BlockOp::Read { offset, len } => {
                self.check(offset.0, u64::from(*len), true)?;
                st.reads += 1;
                st.max_op_len = st.max_op_len.max(u64::from(*len));
                drop(st);
                let mut buf = BytesMut::zeroed(*len as usize);
                self.copy_out(offset.0, &mut buf);
                Ok(Outcome::Data(buf.freeze()))
            }
            BlockOp::Write { offset, data, fua } => {
                self.check(offset.0, data.len() as u64, true)?;
                st.writes += 1;
                st.fua_writes += u64::from(*fua);
                st.max_op_len = st.max_op_len.max(data.len() as u64);
                drop(st);
                self.copy_in(offset.0, Some(data), data.len() as u64);
                Ok(Outcome::Done)
            }
            BlockOp::Flush => {
                st.flushes += 1;
                Ok(Outcome::Done)
            }
            BlockOp::Discard { offset, len } => {
                if !self.info.supports_discard {
                    return Err(IoError::new(IoErrorKind::Invalid, "discard not supported"));
                }
                self.check(offset.0, *len, false)?;
                st.discards += 1;
                drop(st);
                // Discarded blocks read back as zeroes here (allowed: "zeroes or old data").
                self.copy_in(offset.0, None, *len);
                Ok(Outcome::Done)
            }
            BlockOp::WriteZeroes { offset, len, .. } => {
                if !self.info.supports_write_zeroes {
                    return Err(IoError::new(
                        IoErrorKind::Invalid,
                        "write zeroes not supported",
                    ));
                }
                self.check(offset.0, *len, false)?;
                st.write_zeroes += 1;
                drop(st);
                self.copy_in(offset.0, None, *len);
                Ok(Outcome::Done)
            }
        }
    }
}

impl BlockDevice for MemDevice {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn submit(&self, op: BlockOp) -> impl Future<Output = Result<Outcome, IoError>> + Send {
        let extra = match &op {
            BlockOp::Read { offset, .. } => lock(&self.read_delays).get(&offset.0).copied(),
            _ => None,
        };
        let delay = self.delay + extra.unwrap_or_default();
        async move {
            let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.max_in_flight.fetch_max(now, Ordering::Relaxed);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let r = self.execute(&op);
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            r
        }
    }
}

/// Data bytes are never left half-updated by a panic, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of a deterministic pseudo-random pattern (xorshift), for tests that compare data.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::ByteOffset;

    #[tokio::test]
    async fn strict_and_sparse() {
        let d = MemDevice::builder(1 << 20, 512).max_transfer(4096).build();
        let w = |o: u64, n: usize| BlockOp::Write {
            offset: ByteOffset(o),
            data: pattern(o, n),
            fua: false,
        };
        assert!(d.submit(w(512, 1024)).await.is_ok());
        assert!(d.submit(w(100, 512)).await.is_err());
        assert!(d.submit(w(0, 8192)).await.is_err());
        assert!(d.submit(w((1 << 20) - 512, 1024)).await.is_err());
        let r = d
            .submit(BlockOp::Read {
                offset: ByteOffset(512),
                len: 1024,
            })
            .await;
        assert_eq!(r, Ok(Outcome::Data(pattern(512, 1024))));
        d.submit(BlockOp::Discard {
            offset: ByteOffset(0),
            len: 1 << 20,
        })
        .await
        .unwrap();
        assert!(d.contents().iter().all(|&b| b == 0));
        assert!(lock(&d.chunks).is_empty());
    }
}
