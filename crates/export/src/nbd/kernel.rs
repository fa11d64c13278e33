//! The kernel's NBD client, attached by this process: `/dev/nbdN` without `nbd-client`.
//!
//! The server makes a unix socket pair, serves one end in the transmission phase (the
//! kernel needs no negotiation: size, block size and flags travel in the netlink request)
//! and hands the other end to the kernel with generic netlink `NBD_CMD_CONNECT`, recording
//! the map's identity as the device's backend identifier (`/sys/block/nbdN/backend`).
//!
//! Why not `nbd-client`: in netlink mode (its default) it sets no dead-connection timeout and
//! never reconnects, so the kernel fails the device's I/O as soon as the serving process
//! goes; in ioctl mode with `-persist` it reconnects, but the kernel has already failed the
//! requests in flight (both seen in the lab's `nbd-restart` scenario). The kernel itself can
//! do better, and this module asks it to:
//!
//! - **`NBD_ATTR_DEAD_CONN_TIMEOUT`** ([`KernelNbdConfig::hold`]): when the connection
//!   dies (the daemon stopped, crashed or is being upgraded), new requests wait in the
//!   kernel for a new connection instead of failing.
//! - **`NBD_CMD_RECONFIGURE`**: the next daemon finds the device by its backend identifier
//!   and gives the kernel a new socket; waiting requests go on.
//! - **No command timeout, a short block-layer timer** ([`KernelNbdConfig::requeue_after`]):
//!   requests the dead process had taken are owned by the kernel, which re-sends them only
//!   from its timeout handler, and only once the socket has changed. With the device's own
//!   timeout at 0 that handler never fails a request nor kills a live connection (a request
//!   queued while every path is down is only logged as "Possible stuck request"); the block
//!   layer's timer (`queue/io_timeout`) says how often it looks.
//!
//! Re-sending what the dead process had taken is safe for the reasons `docs/exports.md`
//! gives for ublk: the next daemon reinstates the old iSCSI sessions (stable ISIDs) before it
//! serves a request, so nothing the old process sent can land after the re-sent copy.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use block::BlockDevice;
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::err::RouterError;
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::nl::NlPayload;
use neli::router::synchronous::NlRouter;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{conn, NbdServer};

/// `include/uapi/linux/nbd-netlink.h`.
mod uapi {
    pub const FAMILY: &str = "nbd";
    pub const VERSION: u8 = 1;
    pub const CMD_CONNECT: u8 = 1;
    pub const CMD_DISCONNECT: u8 = 2;
    pub const CMD_RECONFIGURE: u8 = 3;
    pub const ATTR_INDEX: u16 = 1;
    pub const ATTR_SIZE_BYTES: u16 = 2;
    pub const ATTR_BLOCK_SIZE_BYTES: u16 = 3;
    pub const ATTR_SERVER_FLAGS: u16 = 5;
    pub const ATTR_SOCKETS: u16 = 7;
    pub const ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
    pub const ATTR_BACKEND_IDENTIFIER: u16 = 10;
    pub const SOCK_ITEM: u16 = 1;
    pub const SOCK_FD: u16 = 1;
}

/// How the kernel treats a device this process attached.
#[derive(Clone, Debug)]
pub struct KernelNbdConfig {
    /// How long the kernel holds new requests while no process serves the device (the
    /// daemon restarting, upgraded, or crashed and restarted by its supervisor); after that
    /// they fail with EIO. An hour: a restart takes seconds, and failing I/O under a mounted
    /// filesystem is the worst outcome there is.
    pub hold: Duration,
    /// The block layer's timer for the device's requests (`queue/io_timeout`, whole
    /// seconds in effect): how soon after a new daemon attached the kernel re-sends the
    /// requests a dead process had taken. It never fails a request (the device's command
    /// timeout is 0); a request waiting longer only logs "Possible stuck request" each time.
    pub requeue_after: Duration,
}

impl Default for KernelNbdConfig {
    fn default() -> Self {
        KernelNbdConfig {
            hold: Duration::from_secs(3600),
            requeue_after: Duration::from_secs(1),
        }
    }
}

/// Why a kernel NBD device could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum KernelNbdError {
    #[error("no export named {0:?}")]
    NoExport(String),
    #[error("the kernel's NBD driver does not answer (generic netlink family \"nbd\": {0}); is the nbd module loaded (`modprobe nbd`)?")]
    NoDriver(String),
    #[error(
        "/dev/nbd{index} serves {identity} and its connection is alive: another process serves it"
    )]
    Busy { index: u32, identity: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> KernelNbdError {
    let what = what.into();
    move |source| KernelNbdError::Io { what, source }
}

/// A `/dev/nbdN` this process serves.
pub struct KernelDevice {
    index: u32,
    recovered: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl KernelDevice {
    /// N of `/dev/nbdN`.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/nbd{}", self.index))
    }

    /// Taken over from an earlier process (`NBD_CMD_RECONFIGURE`), not newly connected.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The connection still runs (the kernel did not disconnect the device).
    pub fn is_serving(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stop serving but leave the device to the next process: no new request is read,
    /// those read are answered, then the connection closes and the kernel holds further
    /// requests for [`KernelNbdConfig::hold`]. Requests it had written to the socket but
    /// this process had not read yet are re-sent to the next process.
    pub async fn hand_off(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Disconnect the device (`NBD_CMD_DISCONNECT`): the kernel sends NBD_CMD_DISC, this
    /// process answers what it had read and closes. The kernel fails requests still
    /// queued in it, as `nbd-client -d` does.
    pub async fn detach(self) -> Result<(), KernelNbdError> {
        let index = self.index;
        let r = tokio::task::spawn_blocking(move || Netlink::open()?.disconnect(index))
            .await
            .map_err(|e| KernelNbdError::Io {
                what: format!("disconnect /dev/nbd{index}"),
                source: io::Error::other(e),
            })?;
        if r.is_err() {
            let _ = self.stop.send(true);
        }
        let _ = self.task.await;
        r
    }
}

/// The device whose backend identifier is `identity`, if any (`/sys/block/nbd*/backend`).
pub fn find(identity: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/sys/block").ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name();
        let index: u32 = name.to_str()?.strip_prefix("nbd")?.parse().ok()?;
        let backend = std::fs::read_to_string(e.path().join("backend")).ok()?;
        (backend.trim_end() == identity).then_some(index)
    })
}

impl<D: BlockDevice + 'static> NbdServer<D> {
    /// Attach export `name` as a kernel NBD device identified by `identity`: take over the
    /// device an earlier process left with that identity, else connect a new one.
    pub async fn attach_kernel(
        &self,
        name: &str,
        identity: &str,
        cfg: &KernelNbdConfig,
    ) -> Result<KernelDevice, KernelNbdError> {
        let export = self
            .shared
            .exports
            .get(name)
            .ok_or_else(|| KernelNbdError::NoExport(name.to_string()))?;
        let info = export.info();
        let flags = u64::from(conn::transmission_flags(&self.shared, &info));
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(io_err("socket pair"))?;
        // Serve before the kernel has the socket: it reads the partition table while
        // NBD_CMD_CONNECT is still running.
        ours.set_nonblocking(true).map_err(io_err("socket pair"))?;
        let ours = tokio::net::UnixStream::from_std(ours).map_err(io_err("socket pair"))?;
        let (r, w) = ours.into_split();
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("nbd", peer = %format!("kernel NBD {identity}"));
        let task = tokio::spawn(
            conn::serve_transmission(Arc::clone(&self.shared), export, r, w, stopped)
                .instrument(span),
        );
        let id = identity.to_string();
        let hold = cfg.hold;
        let attached = tokio::task::spawn_blocking(move || {
            let nl = Netlink::open()?;
            if let Some(index) = find(&id) {
                match nl.reconfigure(index, theirs.as_raw_fd(), hold, &id) {
                    Ok(()) => return Ok((index, true)),
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                        return Err(KernelNbdError::Busy {
                            index,
                            identity: id,
                        })
                    }
                    // Disconnected meanwhile (`nbd-client -d`): connect a fresh device.
                    Err(e) => tracing::info!(
                        "/dev/nbd{index} was {id} but cannot be taken over ({e}); connecting a new device"
                    ),
                }
            }
            let index = nl
                .connect(theirs.as_raw_fd(), info.size, info.block_size, flags, hold, &id)
                .map_err(io_err("NBD_CMD_CONNECT"))?;
            // `theirs` closes here: the kernel holds its own reference to the socket.
            Ok((index, false))
        })
        .await
        .map_err(|e| KernelNbdError::Io {
            what: "netlink".into(),
            source: io::Error::other(e),
        })
        .and_then(|r| r);
        let (index, recovered) = match attached {
            Ok(a) => a,
            Err(e) => {
                let _ = stop.send(true);
                let _ = task.await;
                return Err(e);
            }
        };
        let timer = format!("/sys/block/nbd{index}/queue/io_timeout");
        let ms = cfg.requeue_after.as_millis().max(1000).to_string();
        if let Err(e) = std::fs::write(&timer, &ms) {
            tracing::warn!("cannot set {timer} to {ms}: {e}; requests of a crashed daemon are re-sent after the default 30 s");
        }
        Ok(KernelDevice {
            index,
            recovered,
            stop,
            task,
        })
    }
}

/// A generic netlink socket to the kernel's NBD family.
struct Netlink {
    router: NlRouter,
    family: u16,
}

fn attr(kind: u16, payload: impl neli::Size + neli::ToBytes) -> io::Result<Nlattr<u16, Buffer>> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(kind)
                .build()
                .map_err(io::Error::other)?,
        )
        .nla_payload(payload)
        .build()
        .map_err(io::Error::other)
}

/// `NBD_ATTR_SOCKETS { NBD_SOCK_ITEM { NBD_SOCK_FD } }`.
fn sockets(fd: i32) -> io::Result<Nlattr<u16, Buffer>> {
    let item = attr(uapi::SOCK_ITEM, Vec::<u8>::new())?
        .nest(&attr(uapi::SOCK_FD, fd as u32)?)
        .map_err(io::Error::other)?;
    attr(uapi::ATTR_SOCKETS, Vec::<u8>::new())?
        .nest(&item)
        .map_err(io::Error::other)
}

/// An error the kernel answered becomes its errno; anything else stays text.
fn router_err<T: std::fmt::Debug, P: std::fmt::Debug>(e: RouterError<T, P>) -> io::Error {
    match e {
        RouterError::Nlmsgerr(m) => io::Error::from_raw_os_error(-*m.error()),
        other => io::Error::other(other.to_string()),
    }
}

impl Netlink {
    fn open() -> Result<Netlink, KernelNbdError> {
        let (router, _) =
            NlRouter::connect(NlFamily::Generic, Some(0), Groups::empty()).map_err(|e| {
                KernelNbdError::Io {
                    what: "generic netlink socket".into(),
                    source: io::Error::other(e.to_string()),
                }
            })?;
        let family = router
            .resolve_genl_family(uapi::FAMILY)
            .map_err(|e| KernelNbdError::NoDriver(e.to_string()))?;
        Ok(Netlink { router, family })
    }

    /// Send one command; the device index the kernel answers with, if any.
    fn request(&self, cmd: u8, attrs: Vec<Nlattr<u16, Buffer>>) -> io::Result<Option<u32>> {
        let genl = GenlmsghdrBuilder::<u8, u16>::default()
            .cmd(cmd)
            .version(uapi::VERSION)
            .attrs(attrs.into_iter().collect::<GenlBuffer<u16, Buffer>>())
            .build()
            .map_err(io::Error::other)?;
        let replies = self
            .router
            .send::<_, _, u16, Genlmsghdr<u8, u16>>(
                self.family,
                NlmF::ACK,
                NlPayload::Payload(genl),
            )
            .map_err(router_err)?;
        let mut index = None;
        for reply in replies {
            let reply = reply.map_err(router_err)?;
            if let Some(p) = reply.get_payload() {
                if let Ok(i) = p
                    .attrs()
                    .get_attr_handle()
                    .get_attr_payload_as::<u32>(uapi::ATTR_INDEX)
                {
                    index = Some(i);
                }
            }
        }
        Ok(index)
    }

    fn connect(
        &self,
        fd: i32,
        size: u64,
        block_size: u32,
        flags: u64,
        hold: Duration,
        identity: &str,
    ) -> io::Result<u32> {
        let attrs = vec![
            attr(uapi::ATTR_SIZE_BYTES, size)?,
            attr(uapi::ATTR_BLOCK_SIZE_BYTES, u64::from(block_size))?,
            attr(uapi::ATTR_SERVER_FLAGS, flags)?,
            attr(uapi::ATTR_DEAD_CONN_TIMEOUT, hold.as_secs().max(1))?,
            attr(uapi::ATTR_BACKEND_IDENTIFIER, identity)?,
            sockets(fd)?,
        ];
        self.request(uapi::CMD_CONNECT, attrs)?
            .ok_or_else(|| io::Error::other("the kernel connected a device but did not say which"))
    }

    fn reconfigure(&self, index: u32, fd: i32, hold: Duration, identity: &str) -> io::Result<()> {
        let attrs = vec![
            attr(uapi::ATTR_INDEX, index)?,
            attr(uapi::ATTR_DEAD_CONN_TIMEOUT, hold.as_secs().max(1))?,
            attr(uapi::ATTR_BACKEND_IDENTIFIER, identity)?,
            sockets(fd)?,
        ];
        self.request(uapi::CMD_RECONFIGURE, attrs).map(|_| ())
    }

    fn disconnect(&self, index: u32) -> Result<(), KernelNbdError> {
        self.request(
            uapi::CMD_DISCONNECT,
            vec![attr(uapi::ATTR_INDEX, index).map_err(io_err("netlink"))?],
        )
        .map(|_| ())
        .map_err(io_err(format!("NBD_CMD_DISCONNECT /dev/nbd{index}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_list_nests_one_item_with_the_descriptor() {
        let a = sockets(7).unwrap();
        // SOCKETS (nested) → SOCK_ITEM (nested) → SOCK_FD u32.
        assert!(*a.nla_type().nla_nested());
        assert_eq!(*a.nla_type().nla_type(), uapi::ATTR_SOCKETS);
        let items = a.get_attr_handle::<u16>().unwrap();
        let item = items.get_attribute(uapi::SOCK_ITEM).unwrap();
        let fd: u32 = item
            .get_attr_handle::<u16>()
            .unwrap()
            .get_attr_payload_as(uapi::SOCK_FD)
            .unwrap();
        assert_eq!(fd, 7);
    }

    /// What the kernel's side of the socket sees when the daemon hands the device over: the
    /// request it had read is answered, then the connection closes (the kernel then holds
    /// the device's I/O for the next daemon).
    #[tokio::test]
    async fn a_hand_off_answers_what_was_read_then_closes() {
        use crate::mem::{pattern, MemDevice};
        use crate::Exports;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use super::super::proto::{Request, CMD_WRITE, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};
        use super::super::NbdConfig;

        let dev = Arc::new(
            MemDevice::builder(4 << 20, 512)
                .delay(Duration::from_millis(50))
                .build(),
        );
        let exports = Exports::new();
        exports.insert("m", Arc::clone(&dev)).unwrap();
        let server = NbdServer::new(exports.clone(), NbdConfig::default());
        let (ours, mut kernel) = tokio::net::UnixStream::pair().unwrap();
        let (r, w) = ours.into_split();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(conn::serve_transmission(
            Arc::clone(&server.shared),
            exports.get("m").unwrap(),
            r,
            w,
            stopped,
        ));
        // No negotiation: the first bytes are a request, as from the kernel.
        let req = Request {
            magic: REQUEST_MAGIC,
            flags: 0,
            kind: CMD_WRITE,
            cookie: 7,
            offset: 4096,
            len: 4096,
        };
        kernel.write_all(&req.encode()).await.unwrap();
        kernel.write_all(&pattern(3, 4096)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = stop.send(true);
        let mut reply = [0u8; 16];
        kernel.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(reply[4..8], [0; 4], "no error");
        assert_eq!(reply[8..], 7u64.to_be_bytes());
        let mut more = [0u8; 1];
        assert_eq!(
            kernel.read(&mut more).await.unwrap(),
            0,
            "closed after the reply"
        );
        task.await.unwrap();
        assert_eq!(dev.contents()[4096..8192], pattern(3, 4096)[..]);
    }

    #[test]
    fn the_backend_of_an_unknown_identity_is_not_found() {
        assert_eq!(find("mpath-no-such-wwid-\u{1}"), None);
    }
}
