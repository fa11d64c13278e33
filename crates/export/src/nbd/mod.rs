//! The NBD server: one named export per map, over TCP and/or unix sockets.
//!
//! Fixed newstyle negotiation (NBD_OPT_GO/INFO/LIST/ABORT and EXPORT_NAME, with the export,
//! name, description and block-size information), then the transmission phase with simple
//! replies: READ, WRITE (FUA), FLUSH, TRIM (when the device discards), WRITE_ZEROES (NO_HOLE
//! clears `may_unmap`), DISC. Requests of a connection run concurrently and complete in any
//! order; one writer task per connection sends the replies. See `docs/exports.md`.
//!
//! Lifecycle as in mini-redis: the listeners and the shutdown future are passed in, so the
//! daemon and tests bind and stop the server the same way.
//!
//! ```no_run
//! # async fn f(exports: export::Exports<export::mem::MemDevice>) -> std::io::Result<()> {
//! use export::nbd::{NbdConfig, NbdServer};
//! let tcp = tokio::net::TcpListener::bind(export::nbd::DEFAULT_ADDR).await?;
//! let unix = tokio::net::UnixListener::bind("/run/mpath/nbd.sock")?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = NbdServer::new(exports, NbdConfig::default());
//! let task = tokio::spawn(server.run(vec![tcp.into(), unix.into()], async move {
//!     let _ = stopped.await;
//! }));
//! // ...
//! let _ = stop.send(());
//! let _ = task.await; // every connection has drained its in-flight requests
//! # Ok(()) }
//! ```

mod conn;
pub mod kernel;
pub mod proto;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use block::BlockDevice;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::registry::Exports;

/// The IANA-assigned NBD port on loopback: exports are for this host unless the operator
/// binds elsewhere.
pub const DEFAULT_ADDR: &str = "127.0.0.1:10809";

/// Largest READ or WRITE accepted: 32 MiB, the limit the protocol document recommends and
/// that clients (qemu, libnbd, the kernel) never exceed. A larger READ gets EINVAL; a larger
/// WRITE closes the connection, since skipping gigabytes of payload to stay in sync is not
/// worth trusting a peer that sent it.
pub const MAX_REQUEST: u32 = 32 << 20;

/// Largest option the client may send during negotiation: NBD_OPT_GO carries a name of at
/// most 4096 bytes plus its length and a list of info requests; 8 KiB covers that with
/// room to spare. A longer option is garbage and closes the connection.
pub const MAX_OPTION_LEN: u32 = 8 << 10;

/// How the server behaves; every limit is per connection.
#[derive(Clone, Debug)]
pub struct NbdConfig {
    /// Advertise NBD_FLAG_CAN_MULTI_CONN. Safe because the server keeps no cache: a write is
    /// on the device before its reply, every connection submits to the same device, and the
    /// device's FLUSH covers every write completed before it whatever connection (or path)
    /// it came through. See `docs/exports.md`.
    pub multi_conn: bool,
    /// A client that has not finished negotiating after this long is disconnected: tools
    /// negotiate in milliseconds; a minute leaves room for a human at `nbdsh`.
    pub handshake_timeout: Duration,
    /// Requests in flight per connection: above nbdcopy's default 64 and fio's usual depths,
    /// low enough to bound tasks and memory per client.
    pub max_in_flight: usize,
    /// Bytes of READ and WRITE payload in flight per connection (at least [`MAX_REQUEST`]):
    /// the memory one client can pin.
    pub max_in_flight_bytes: u32,
    /// When a connection ends (DISC, close, garbage, shutdown), how long it may take to
    /// finish its in-flight requests and send their replies before it is dropped. Device
    /// operations already submitted complete regardless; only their replies are lost. 90 s
    /// outlasts the engine's default no-path queueing (60 s), so a request queued while
    /// every path is down still gets its answer.
    pub drain_timeout: Duration,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            multi_conn: true,
            handshake_timeout: Duration::from_secs(60),
            max_in_flight: 128,
            max_in_flight_bytes: 64 << 20,
            drain_timeout: Duration::from_secs(90),
        }
    }
}

/// A socket the server accepts connections on.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp {a}"),
                Err(_) => "tcp".into(),
            },
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix {}", p.display())))
            {
                Some(s) => s,
                None => "unix".into(),
            },
        }
    }
}

/// The NBD server over a registry of exports.
pub struct NbdServer<D> {
    shared: Arc<Shared<D>>,
}

impl<D> Clone for NbdServer<D> {
    fn clone(&self) -> Self {
        NbdServer {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<D> {
    exports: Exports<D>,
    config: NbdConfig,
}

impl<D: BlockDevice + 'static> NbdServer<D> {
    pub fn new(exports: Exports<D>, mut config: NbdConfig) -> NbdServer<D> {
        config.max_in_flight = config.max_in_flight.max(1);
        config.max_in_flight_bytes = config.max_in_flight_bytes.max(MAX_REQUEST);
        NbdServer {
            shared: Arc::new(Shared { exports, config }),
        }
    }

    /// Accept connections on every listener until `shutdown` resolves; then stop accepting,
    /// let each connection finish its in-flight requests (bounded by
    /// [`NbdConfig::drain_timeout`]) and return when all are closed.
    ///
    /// Must run on a tokio runtime with time and I/O enabled.
    pub async fn run(self, listeners: Vec<Listener>, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every accept loop and connection holds a sender; recv() returns None once all
        // have finished (mini-redis's shutdown_complete).
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        for l in listeners {
            tracing::info!(listener = %l.describe(), "NBD server listening");
            let server = self.clone();
            let stop = stop_rx.clone();
            let done = done_tx.clone();
            tokio::spawn(async move { server.accept_loop(l, stop, done).await });
        }
        drop(done_tx);
        shutdown.await;
        tracing::info!("NBD server shutting down");
        let _ = stop_tx.send(true);
        let _ = done_rx.recv().await;
    }

    async fn accept_loop(
        self,
        listener: Listener,
        mut stop: watch::Receiver<bool>,
        done: mpsc::Sender<()>,
    ) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = conn::stopped(&mut stop) => return,
                a = accept(&listener) => a,
            };
            match accepted {
                Ok(stream) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let server = self.clone();
                    let stop = stop.clone();
                    let done = done.clone();
                    let span = tracing::info_span!("nbd", peer = %stream.peer);
                    tokio::spawn(
                        async move {
                            stream.serve(server.shared, stop).await;
                            drop(done);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE, ENOBUFS, ECONNABORTED…: transient; keep serving the others.
                    tracing::warn!(listener = %listener.describe(), "accept failed: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = conn::stopped(&mut stop) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Back-off after a failed accept (out of file descriptors, say): short enough not to be
/// noticed once the condition clears, long enough not to spin and flood the log.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// An accepted connection of either kind.
struct Accepted {
    peer: String,
    stream: Stream,
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            // Replies are small and latency-bound: do not let Nagle hold them.
            let _ = s.set_nodelay(true);
            Ok(Accepted {
                peer: addr.to_string(),
                stream: Stream::Tcp(s),
            })
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let peer = match s.peer_cred() {
                Ok(c) => format!("unix pid {} uid {}", c.pid().unwrap_or(0), c.uid()),
                Err(_) => "unix".into(),
            };
            Ok(Accepted {
                peer,
                stream: Stream::Unix(s),
            })
        }
    }
}

impl Accepted {
    async fn serve<D: BlockDevice + 'static>(
        self,
        shared: Arc<Shared<D>>,
        stop: watch::Receiver<bool>,
    ) {
        match self.stream {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                conn::serve(shared, r, w, stop).await
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                conn::serve(shared, r, w, stop).await
            }
        }
    }
}

#[cfg(test)]
mod tests;
