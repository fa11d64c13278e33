//! Verifying block workloads for mpath: a minimal NBD client ([`nbd::NbdClient`]) and a
//! write/read workload ([`verify::Workload`]) that proves every block holds what the last
//! acknowledged write put there.
//!
//! The workload runs over anything that implements [`BlockClient`]: the NBD client (the
//! host's view of a map, through the export) or, in-process, any
//! [`BlockDevice`] behind an `Arc`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use workload::nbd::NbdClient;
//! use workload::verify::{Config, Workload};
//!
//! let client = NbdClient::connect_tcp("127.0.0.1:10809", "mpatha").await?;
//! let config = Config {
//!     duration: Duration::from_secs(15),
//!     ..Config::for_region(0, client.size())
//! };
//! let workload = Workload::new(client.clone(), config)?;
//! let report = workload.run().await;
//! let check = workload.verify_all().await;
//! assert!(report.clean() && check.clean());
//! # Ok(()) }
//! ```

pub mod nbd;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use block::{BlockDevice, BlockOp, ByteOffset, IoError, IoErrorKind, Outcome};
use bytes::Bytes;

/// What a workload needs of a block device: aligned reads and writes, and flush.
///
/// Clones share one device (the workload hands one clone to each worker).
pub trait BlockClient: Clone + Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Capacity in bytes.
    fn size(&self) -> u64;
    /// The smallest unit of I/O that needs no read-modify-write.
    fn block_size(&self) -> u32;
    /// The largest single read or write, in bytes.
    fn max_transfer(&self) -> u32;

    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;
    /// `fua`: the data is on stable storage when the write completes.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// An in-process device (a map, a `MemDevice`) as a workload's client, without NBD.
impl<D: BlockDevice + 'static> BlockClient for Arc<D> {
    type Error = IoError;

    fn size(&self) -> u64 {
        self.info().size
    }

    fn block_size(&self) -> u32 {
        self.info().block_size
    }

    fn max_transfer(&self) -> u32 {
        self.info().max_transfer
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let op = BlockOp::Read {
            offset: ByteOffset(offset),
            len,
        };
        match self.submit(op).await? {
            Outcome::Data(b) => Ok(b),
            Outcome::Done => Err(IoError::new(
                IoErrorKind::Invalid,
                format!("read at {offset} length {len} completed without data"),
            )),
        }
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        let op = BlockOp::Write {
            offset: ByteOffset(offset),
            data,
            fua,
        };
        self.submit(op).await.map(drop)
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.submit(BlockOp::Flush).await.map(drop)
    }
}
