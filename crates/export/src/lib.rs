//! Exports of a [`BlockDevice`] to the host: an NBD server and a FUSE directory.
//!
//! Both are thin adapters over one [`BlockDevice`] per multipath map. The daemon keeps one
//! [`Exports`] registry (map name → device) and hands clones of it to the adapters, so a map
//! added or removed at run time appears or disappears in both:
//!
//! ```no_run
//! # async fn wire<D: block::BlockDevice + 'static>(device: std::sync::Arc<D>) -> std::io::Result<()> {
//! use export::{fuse::{FuseConfig, FuseMount}, nbd::{NbdConfig, NbdServer}, Exports};
//!
//! let exports = Exports::new();
//! exports.insert("mpatha", device).expect("a valid export name");
//!
//! // NBD on 127.0.0.1:10809, until `shutdown` resolves.
//! let tcp = tokio::net::TcpListener::bind(export::nbd::DEFAULT_ADDR).await?;
//! let shutdown = std::future::pending::<()>();
//! let nbd = NbdServer::new(exports.clone(), NbdConfig::default());
//! tokio::spawn(nbd.run(vec![tcp.into()], shutdown));
//!
//! // One file per map under /run/mpath/maps; unmounted when `mount` is dropped.
//! let mount = FuseMount::mount(exports.clone(), "/run/mpath/maps", FuseConfig::default())?;
//! # drop(mount); Ok(()) }
//! ```
//!
//! What each adapter adds is only protocol: the shared [`io`] layer turns byte ranges into
//! block operations (alignment with read-modify-write, splitting at the device's maximum
//! transfer, emulated write-zeroes), and [`errno`] maps an [`IoError`](block::IoError) to the
//! errno both protocols send. See `docs/exports.md`.
//!
//! [`BlockDevice`]: block::BlockDevice

mod error;
pub mod fuse;
pub mod io;
#[cfg(any(test, feature = "mem"))]
pub mod mem;
pub mod nbd;
mod registry;
pub mod ublk;

pub use error::{errno, Errno};
pub use registry::{Export, Exports, NameError};
