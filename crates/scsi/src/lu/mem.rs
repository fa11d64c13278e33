//! A thin-provisioned in-memory [`Backend`] for tests (this crate's and
//! other crates'), with flush counting and fault switches.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use super::Backend;

/// Allocation granule of the mapping bitmap; matches the smallest logical
/// block size we serve so every block has its own mapped bit.
const GRANULE: u64 = 512;

struct Inner {
    data: Vec<u8>,
    /// One bit per granule: written since the last unmap.
    mapped: Vec<bool>,
}

/// Memory-backed storage. Starts fully unmapped (reads return zeroes).
pub struct MemBackend {
    inner: RwLock<Inner>,
    volatile: bool,
    flushes: AtomicU64,
    writes: AtomicU64,
    fail_read: AtomicBool,
    fail_write: AtomicBool,
    fail_flush: AtomicBool,
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend")
            .field("len", &self.len_bytes())
            .field("volatile", &self.volatile)
            .finish()
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl MemBackend {
    /// `len` bytes; `volatile_write_cache` makes it claim a volatile cache
    /// (so the LU reports WCE=1 and honours FUA with flushes).
    pub fn new(len: u64, volatile_write_cache: bool) -> MemBackend {
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        MemBackend {
            inner: RwLock::new(Inner {
                data: vec![0; n],
                mapped: vec![false; n.div_ceil(GRANULE as usize)],
            }),
            volatile: volatile_write_cache,
            flushes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            fail_read: AtomicBool::new(false),
            fail_write: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
        }
    }

    /// How many times `flush` was called.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// How many times `write_at` was called.
    pub fn write_count(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn fail_reads(&self, fail: bool) {
        self.fail_read.store(fail, Ordering::Relaxed);
    }

    pub fn fail_writes(&self, fail: bool) {
        self.fail_write.store(fail, Ordering::Relaxed);
    }

    pub fn fail_flushes(&self, fail: bool) {
        self.fail_flush.store(fail, Ordering::Relaxed);
    }

    /// Grow or shrink (then call `LogicalUnit::resize_notify`).
    pub fn resize(&self, len: u64) {
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        g.data.resize(n, 0);
        g.mapped.resize(n.div_ceil(GRANULE as usize), false);
    }

    /// A copy of the bytes at `offset` (test convenience).
    pub fn snapshot(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        let _ = self.read_at(&mut v, offset);
        v
    }

    fn range(data_len: usize, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if end > data_len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(start..end)
    }
}

impl Backend for MemBackend {
    fn len_bytes(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .data
            .len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.fail_read.load(Ordering::Relaxed) {
            return Err(injected("read"));
        }
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(g.data.len(), offset, buf.len())?;
        buf.copy_from_slice(&g.data[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fail_write.load(Ordering::Relaxed) {
            return Err(injected("write"));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(g.data.len(), offset, buf.len())?;
        g.data[r.clone()].copy_from_slice(buf);
        if !buf.is_empty() {
            let first = r.start / GRANULE as usize;
            let last = (r.end - 1) / GRANULE as usize;
            g.mapped[first..=last].iter_mut().for_each(|m| *m = true);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if self.fail_flush.load(Ordering::Relaxed) {
            return Err(injected("flush"));
        }
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.fail_write.load(Ordering::Relaxed) {
            return Err(injected("unmap"));
        }
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(g.data.len(), offset, len)?;
        g.data[r.clone()].fill(0);
        // Only granules wholly inside the range become unmapped.
        let gr = GRANULE as usize;
        let first = r.start.div_ceil(gr);
        let last = r.end / gr;
        if first < last {
            g.mapped[first..last].iter_mut().for_each(|m| *m = false);
        }
        Ok(())
    }

    fn map_status(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let start = offset / GRANULE;
        let Some(&first) = g.mapped.get(start as usize) else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        let mut run = 0u64;
        let mut at = start as usize;
        while run < len && at < g.mapped.len() && g.mapped[at] == first {
            run += GRANULE
                - if at == start as usize {
                    offset % GRANULE
                } else {
                    0
                };
            at += 1;
        }
        Ok((first, run.min(len)))
    }

    fn volatile_write_cache(&self) -> bool {
        self.volatile
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.read_at(buf, offset).map(|()| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_semantics() {
        let m = MemBackend::new(8 * 512, true);
        assert_eq!(m.map_status(0, 4096).unwrap(), (false, 4096));
        m.write_at(&[1; 1024], 1024).unwrap();
        assert_eq!(m.map_status(0, 4096).unwrap(), (false, 1024));
        assert_eq!(m.map_status(1024, 3072).unwrap(), (true, 1024));
        m.unmap(1024, 512).unwrap();
        assert_eq!(m.snapshot(1024, 512), vec![0; 512]);
        assert_eq!(m.map_status(1024, 1024).unwrap(), (false, 512));
        assert!(m.read_at(&mut [0; 2], 4095).is_err());
        m.flush().unwrap();
        assert_eq!(m.flush_count(), 1);
    }
}
