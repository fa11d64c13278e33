//! A minimal NBD client: fixed newstyle negotiation with `NBD_OPT_GO`, simple replies,
//! pipelined requests, over TCP or a unix socket.
//!
//! Every request gets a cookie and a oneshot; one writer task sends requests in the order
//! they were made (batched into the socket), one reader task matches replies to cookies, so
//! any number of requests may be in flight and complete in any order. When the connection
//! fails, every waiting request fails with the reason, and so does every later one.
//!
//! Structured replies, block status and TLS are not negotiated: a workload needs none of
//! them, and every server falls back to simple replies.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use export::nbd::proto::{
    command_name, option_name, Request, CMD_DISC, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLUSH,
    CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, FLAG_CAN_MULTI_CONN, FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, FLAG_READ_ONLY, FLAG_SEND_FLUSH,
    FLAG_SEND_FUA, FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT,
    NBDMAGIC, OPT_GO, REPLY_MAGIC, REP_ACK, REP_INFO, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use crate::BlockClient;

/// How long negotiation may take: a server answers in milliseconds; 30 s leaves room for a
/// loaded CI machine, and a wrong port (something that accepts but never speaks NBD) still
/// fails visibly instead of hanging.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest option reply accepted: an export name or description is at most 4 KiB, and the
/// other replies are a few bytes; anything larger is not a sane server.
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// Largest READ or WRITE sent when the server states no maximum block size: the limit the
/// protocol document says every server accepts.
const DEFAULT_MAX_REQUEST: u32 = 32 << 20;

/// Socket buffering for the writer task: enough for a few pipelined 64 KiB writes per
/// syscall, small enough not to matter per connection.
const WRITE_BUFFER: usize = 256 << 10;

/// Socket buffering for the reader task: batches many small replies per syscall.
const READ_BUFFER: usize = 256 << 10;

/// Magic of a structured reply: never negotiated, so a protocol violation if seen.
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Why an NBD operation failed. Every message names the server and the request.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NBD server {peer}: protocol violation: {detail}")]
    Protocol { peer: String, detail: String },
    #[error("NBD server {peer} refused {option} for export {export:?}: {reply} {message}")]
    Refused {
        peer: String,
        option: String,
        export: String,
        reply: String,
        message: String,
    },
    #[error("NBD server {peer}: {command} offset {offset} length {len}: {errno}")]
    Command {
        peer: String,
        command: String,
        offset: u64,
        len: u32,
        errno: Errno,
    },
    #[error("NBD server {peer}: {command} offset {offset} length {len} not sent: {reason}")]
    Rejected {
        peer: String,
        command: String,
        offset: u64,
        len: u32,
        reason: String,
    },
    #[error("NBD connection to {peer} closed: {reason}")]
    Closed { peer: String, reason: String },
}

/// An error number from an NBD simple reply (the protocol's errno values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub u32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1 => "EPERM",
            5 => "EIO",
            12 => "ENOMEM",
            22 => "EINVAL",
            28 => "ENOSPC",
            75 => "EOVERFLOW",
            95 => "ENOTSUP",
            108 => "ESHUTDOWN",
            _ => "unknown error",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// What the server said about the export during negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    /// Capacity in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Block sizes from `NBD_INFO_BLOCK_SIZE`; 1 / 4096 / 32 MiB when the server sent none
    /// (the protocol's defaults).
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }
    pub fn can_flush(&self) -> bool {
        self.flags & FLAG_SEND_FLUSH != 0
    }
    pub fn can_fua(&self) -> bool {
        self.flags & FLAG_SEND_FUA != 0
    }
    pub fn can_trim(&self) -> bool {
        self.flags & FLAG_SEND_TRIM != 0
    }
    pub fn can_write_zeroes(&self) -> bool {
        self.flags & FLAG_SEND_WRITE_ZEROES != 0
    }
    pub fn can_multi_conn(&self) -> bool {
        self.flags & FLAG_CAN_MULTI_CONN != 0
    }
}

/// A connection to one export. Clones share the connection; it closes when the last clone
/// is dropped (or at [`disconnect`](Self::disconnect)).
#[derive(Clone)]
pub struct NbdClient {
    inner: Arc<Inner>,
}

struct Inner {
    info: ExportInfo,
    peer: String,
    next_cookie: AtomicU64,
    frames: mpsc::UnboundedSender<Frame>,
    pending: Arc<Mutex<Pending>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    reader_abort: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer task ends by itself when `frames` closes; the reader would wait for
        // the server forever.
        self.reader_abort.abort();
    }
}

/// Requests waiting for their reply, and whether new ones may be sent.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Set when the connection failed or DISC was sent: new requests fail with it.
    closed: Option<String>,
}

struct Waiter {
    kind: u16,
    offset: u64,
    len: u32,
    reply: oneshot::Sender<Result<Bytes, NbdError>>,
}

/// One request on its way to the socket.
struct Frame {
    header: [u8; Request::LEN],
    payload: Option<Bytes>,
}

impl NbdClient {
    /// Connect over TCP (with `TCP_NODELAY`) and negotiate `export`.
    pub async fn connect_tcp<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        export: &str,
    ) -> Result<NbdClient, NbdError> {
        let peer = addr.to_string();
        let s = TcpStream::connect(addr)
            .await
            .map_err(|source| NbdError::Io {
                context: format!("cannot connect to NBD server {peer}"),
                source,
            })?;
        s.set_nodelay(true).map_err(|source| NbdError::Io {
            context: format!("NBD server {peer}: TCP_NODELAY"),
            source,
        })?;
        Self::handshake(s, export, peer).await
    }

    /// Connect over a unix socket and negotiate `export`.
    pub async fn connect_unix(path: impl AsRef<Path>, export: &str) -> Result<NbdClient, NbdError> {
        let peer = path.as_ref().display().to_string();
        let s = UnixStream::connect(path.as_ref())
            .await
            .map_err(|source| NbdError::Io {
                context: format!("cannot connect to NBD server {peer}"),
                source,
            })?;
        Self::handshake(s, export, peer).await
    }

    /// Negotiate `export` over an established stream (`peer` names it in errors), within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn handshake<S>(
        mut stream: S,
        export: &str,
        peer: String,
    ) -> Result<NbdClient, NbdError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let info =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut stream, export, &peer))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(NbdError::Protocol {
                        peer,
                        detail: format!("negotiation not finished within {HANDSHAKE_TIMEOUT:?}"),
                    })
                }
            };
        let (r, w) = tokio::io::split(stream);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (frames, frames_rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(w, frames_rx, pending.clone(), peer.clone()));
        let reader = tokio::spawn(reader(r, pending.clone(), peer.clone()));
        Ok(NbdClient {
            inner: Arc::new(Inner {
                info,
                peer,
                next_cookie: AtomicU64::new(1),
                frames,
                pending,
                reader_abort: reader.abort_handle(),
                reader: Mutex::new(Some(reader)),
            }),
        })
    }

    pub fn info(&self) -> &ExportInfo {
        &self.inner.info
    }

    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    /// The server's address or socket path.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, NbdError> {
        self.request(CMD_READ, 0, offset, len, None).await
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), NbdError> {
        let len = u32::try_from(data.len())
            .map_err(|_| self.rejected(CMD_WRITE, offset, u32::MAX, "longer than 4 GiB"))?;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.request(CMD_WRITE, flags, offset, len, Some(data))
            .await
            .map(drop)
    }

    pub async fn flush(&self) -> Result<(), NbdError> {
        self.request(CMD_FLUSH, 0, 0, 0, None).await.map(drop)
    }

    pub async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdError> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.request(CMD_TRIM, flags, offset, len, None)
            .await
            .map(drop)
    }

    /// `no_hole`: the range must stay allocated (no unmap).
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), NbdError> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 } | if no_hole { CMD_FLAG_NO_HOLE } else { 0 };
        self.request(CMD_WRITE_ZEROES, flags, offset, len, None)
            .await
            .map(drop)
    }

    /// Send `NBD_CMD_DISC` and wait until the server has answered every request in flight
    /// and closed the connection. Later requests (on any clone) fail.
    pub async fn disconnect(&self) -> Result<(), NbdError> {
        {
            let mut p = lock(&self.inner.pending);
            if p.closed.is_none() {
                p.closed = Some("disconnected by the client (NBD_CMD_DISC)".into());
            }
        }
        let (_, header) = self.header(CMD_DISC, 0, 0, 0);
        // A failed send means the connection is already gone: nothing left to wait for.
        let _ = self.inner.frames.send(Frame {
            header,
            payload: None,
        });
        let reader = lock(&self.inner.reader).take();
        if let Some(r) = reader {
            r.await.map_err(|e| NbdError::Closed {
                peer: self.inner.peer.clone(),
                reason: format!("reader task: {e}"),
            })?;
        }
        Ok(())
    }

    /// A request header with a fresh cookie.
    fn header(&self, kind: u16, flags: u16, offset: u64, len: u32) -> (u64, [u8; Request::LEN]) {
        let cookie = self.inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        let header = Request {
            magic: REQUEST_MAGIC,
            flags,
            kind,
            cookie,
            offset,
            len,
        }
        .encode();
        (cookie, header)
    }

    fn rejected(&self, kind: u16, offset: u64, len: u32, reason: impl Into<String>) -> NbdError {
        NbdError::Rejected {
            peer: self.inner.peer.clone(),
            command: command_name(kind),
            offset,
            len,
            reason: reason.into(),
        }
    }

    async fn request(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<Bytes>,
    ) -> Result<Bytes, NbdError> {
        if matches!(kind, CMD_READ | CMD_WRITE) && len > self.inner.info.max_block {
            return Err(self.rejected(
                kind,
                offset,
                len,
                format!(
                    "above the server's maximum block size {}",
                    self.inner.info.max_block
                ),
            ));
        }
        let (cookie, header) = self.header(kind, flags, offset, len);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.inner.pending);
            if let Some(reason) = &p.closed {
                return Err(NbdError::Closed {
                    peer: self.inner.peer.clone(),
                    reason: reason.clone(),
                });
            }
            p.waiters.insert(
                cookie,
                Waiter {
                    kind,
                    offset,
                    len,
                    reply: tx,
                },
            );
        }
        if self.inner.frames.send(Frame { header, payload }).is_err() {
            lock(&self.inner.pending).waiters.remove(&cookie);
            return Err(self.closed_error());
        }
        match rx.await {
            Ok(r) => r,
            // The reader dropped the waiter without answering: the connection is gone.
            Err(_) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> NbdError {
        NbdError::Closed {
            peer: self.inner.peer.clone(),
            reason: lock(&self.inner.pending)
                .closed
                .clone()
                .unwrap_or_else(|| "the connection's tasks ended".into()),
        }
    }
}

impl BlockClient for NbdClient {
    type Error = NbdError;

    fn size(&self) -> u64 {
        self.inner.info.size
    }

    fn block_size(&self) -> u32 {
        self.inner.info.preferred_block
    }

    fn max_transfer(&self) -> u32 {
        self.inner.info.max_block
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, NbdError> {
        NbdClient::read(self, offset, len).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), NbdError> {
        NbdClient::write(self, offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), NbdError> {
        NbdClient::flush(self).await
    }
}

/// Fixed newstyle negotiation up to the end of `NBD_OPT_GO`.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    peer: &str,
) -> Result<ExportInfo, NbdError> {
    let io = |what: &str| {
        let context = format!("NBD server {peer}: {what}");
        move |source| NbdError::Io { context, source }
    };
    let protocol = |detail: String| NbdError::Protocol {
        peer: peer.to_string(),
        detail,
    };
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)
        .await
        .map_err(io("reading the greeting"))?;
    let mut g = &greeting[..];
    let (magic, opt_magic, hflags) = (g.get_u64(), g.get_u64(), g.get_u16());
    if magic != NBDMAGIC {
        return Err(protocol(format!(
            "greeting magic {magic:#018x}, not NBDMAGIC: not an NBD server"
        )));
    }
    if opt_magic != IHAVEOPT {
        return Err(protocol(format!(
            "greeting {opt_magic:#018x} instead of IHAVEOPT: an oldstyle server (not supported)"
        )));
    }
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol(
            "the server does not offer fixed newstyle negotiation".into(),
        ));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };

    let name = export.as_bytes();
    let name_len = u32::try_from(name.len())
        .ok()
        .filter(|&n| n <= 4096)
        .ok_or_else(|| {
            protocol(format!(
                "export name of {} bytes is longer than 4096",
                name.len()
            ))
        })?;
    let mut out = BytesMut::new();
    out.put_u32(cflags);
    out.put_u64(IHAVEOPT);
    out.put_u32(OPT_GO);
    // Name length, name, number of info requests, the requests.
    out.put_u32(4 + name_len + 2 + 2);
    out.put_u32(name_len);
    out.put_slice(name);
    out.put_u16(1);
    out.put_u16(INFO_BLOCK_SIZE);
    s.write_all(&out).await.map_err(io("sending NBD_OPT_GO"))?;
    s.flush().await.map_err(io("sending NBD_OPT_GO"))?;

    let mut export_info: Option<(u64, u16)> = None;
    let mut sizes: Option<(u32, u32, u32)> = None;
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)
            .await
            .map_err(io("reading an option reply"))?;
        let mut b = &h[..];
        let (magic, option, reply, len) = (b.get_u64(), b.get_u32(), b.get_u32(), b.get_u32());
        if magic != REPLY_MAGIC {
            return Err(protocol(format!("option reply magic {magic:#018x}")));
        }
        if option != OPT_GO {
            return Err(protocol(format!(
                "reply to {} while NBD_OPT_GO was asked",
                option_name(option)
            )));
        }
        if len > MAX_OPTION_REPLY {
            return Err(protocol(format!(
                "option reply of {len} bytes (at most {MAX_OPTION_REPLY})"
            )));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)
            .await
            .map_err(io("reading an option reply"))?;
        match reply {
            REP_ACK => break,
            REP_INFO => {
                let mut d = &data[..];
                if d.len() < 2 {
                    return Err(protocol("NBD_REP_INFO without a type".into()));
                }
                match d.get_u16() {
                    INFO_EXPORT if d.len() == 10 => export_info = Some((d.get_u64(), d.get_u16())),
                    INFO_BLOCK_SIZE if d.len() == 12 => {
                        sizes = Some((d.get_u32(), d.get_u32(), d.get_u32()))
                    }
                    INFO_EXPORT | INFO_BLOCK_SIZE => {
                        return Err(protocol(format!(
                            "NBD_REP_INFO of {len} bytes has the wrong length"
                        )))
                    }
                    // Name, description, and types this client did not ask for.
                    _ => {}
                }
            }
            r if r & (1 << 31) != 0 => {
                return Err(NbdError::Refused {
                    peer: peer.to_string(),
                    option: option_name(option),
                    export: export.to_string(),
                    reply: reply_name(r),
                    message: String::from_utf8_lossy(&data).into_owned(),
                })
            }
            r => return Err(protocol(format!("unexpected option reply type {r:#x}"))),
        }
    }
    let (size, flags) = export_info
        .ok_or_else(|| protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into()))?;
    let (min_block, preferred_block, max_block) = sizes.unwrap_or((1, 4096, DEFAULT_MAX_REQUEST));
    if min_block == 0 || preferred_block < min_block || max_block < preferred_block {
        return Err(protocol(format!(
            "inconsistent block sizes: minimum {min_block}, preferred {preferred_block}, maximum {max_block}"
        )));
    }
    Ok(ExportInfo {
        name: export.to_string(),
        size,
        flags,
        min_block,
        preferred_block,
        max_block: max_block.min(DEFAULT_MAX_REQUEST),
    })
}

fn reply_name(r: u32) -> String {
    match r & !(1 << 31) {
        1 => "NBD_REP_ERR_UNSUP".into(),
        2 => "NBD_REP_ERR_POLICY".into(),
        3 => "NBD_REP_ERR_INVALID".into(),
        4 => "NBD_REP_ERR_PLATFORM".into(),
        5 => "NBD_REP_ERR_TLS_REQD".into(),
        6 => "NBD_REP_ERR_UNKNOWN".into(),
        7 => "NBD_REP_ERR_SHUTDOWN".into(),
        8 => "NBD_REP_ERR_BLOCK_SIZE_REQD".into(),
        9 => "NBD_REP_ERR_TOO_BIG".into(),
        e => format!("error {e:#x}"),
    }
}

/// Sends frames in order, batching whatever is queued into one flush.
async fn writer<W: AsyncWrite + Unpin>(
    w: W,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    pending: Arc<Mutex<Pending>>,
    peer: String,
) {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        let result = async {
            while let Some(f) = next.take() {
                w.write_all(&f.header).await?;
                if let Some(p) = &f.payload {
                    w.write_all(p).await?;
                }
                next = frames.try_recv().ok();
            }
            w.flush().await
        }
        .await;
        if let Err(e) = result {
            fail_all(&pending, &peer, format!("sending a request: {e}"));
            return;
        }
    }
    // Every client handle is gone: close our side.
    let _ = w.shutdown().await;
}

/// Matches replies to waiting requests until the connection ends.
async fn reader<R: AsyncRead + Unpin>(r: R, pending: Arc<Mutex<Pending>>, peer: String) {
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    let reason = loop {
        let mut h = [0u8; 16];
        if let Err(e) = r.read_exact(&mut h).await {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the server closed the connection".to_string()
            } else {
                format!("reading a reply: {e}")
            };
        }
        let mut b = &h[..];
        let (magic, error, cookie) = (b.get_u32(), b.get_u32(), b.get_u64());
        if magic == STRUCTURED_REPLY_MAGIC {
            break format!("a structured reply (cookie {cookie:#x}) that was never negotiated");
        }
        if magic != SIMPLE_REPLY_MAGIC {
            break format!("reply magic {magic:#010x}");
        }
        let Some(w) = lock(&pending).waiters.remove(&cookie) else {
            break format!("a reply to cookie {cookie:#x}, which no request has");
        };
        let result = if error != 0 {
            Err(NbdError::Command {
                peer: peer.clone(),
                command: command_name(w.kind),
                offset: w.offset,
                len: w.len,
                errno: Errno(error),
            })
        } else if w.kind == CMD_READ {
            let mut data = BytesMut::zeroed(w.len as usize);
            if let Err(e) = r.read_exact(&mut data).await {
                let reason = format!(
                    "reading the data of READ offset {} length {}: {e}",
                    w.offset, w.len
                );
                let _ = w.reply.send(Err(NbdError::Closed {
                    peer: peer.clone(),
                    reason: reason.clone(),
                }));
                break reason;
            }
            Ok(data.freeze())
        } else {
            Ok(Bytes::new())
        };
        // The caller may have given up waiting; its answer is then dropped.
        let _ = w.reply.send(result);
    };
    fail_all(&pending, &peer, reason);
}

/// The connection is unusable: fail every waiting request and every later one.
fn fail_all(pending: &Mutex<Pending>, peer: &str, reason: String) {
    let waiters = {
        let mut p = lock(pending);
        let reason = p.closed.get_or_insert(reason).clone();
        tracing::debug!(peer, %reason, waiting = p.waiters.len(), "NBD connection ended");
        std::mem::take(&mut p.waiters)
            .into_values()
            .map(move |w| (w, reason.clone()))
            .collect::<Vec<_>>()
    };
    for (w, reason) in waiters {
        let _ = w.reply.send(Err(NbdError::Closed {
            peer: peer.to_string(),
            reason: format!(
                "{reason} ({} offset {} length {} unanswered)",
                command_name(w.kind),
                w.offset,
                w.len
            ),
        }));
    }
}

/// Neither task panics while holding the lock, and the map stays consistent if one did.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
