//! One NBD connection: the handshake, then the transmission phase.
//!
//! The reader (this task) parses requests and spawns one task per request; each request
//! task runs its block operations and hands the reply to the writer task, which batches
//! replies into the socket. A peer that sends garbage or vanishes mid-request only loses its
//! own connection: requests already submitted to the device complete (nothing is cancelled
//! half-way), their replies are dropped, and the error is logged with the peer's address
//! (the span).

use std::sync::Arc;

use block::{BlockDevice, DeviceInfo};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::proto::*;
use super::{Shared, MAX_OPTION_LEN, MAX_REQUEST};
use crate::error::{errno, Errno};
use crate::registry::Export;

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("peer disconnected in the middle of {what} (got {got} of {want} bytes)")]
    Truncated {
        what: String,
        got: usize,
        want: usize,
    },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no export named {0:?} (NBD_OPT_EXPORT_NAME cannot report an error, so the connection is closed)")]
    UnknownExport(String),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
}

/// Resolves once the server is stopping (or gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub(super) async fn serve<D, R, W>(
    shared: Arc<Shared<D>>,
    reader: R,
    writer: W,
    mut stop: watch::Receiver<bool>,
) where
    D: BlockDevice + 'static,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = BufReader::with_capacity(READ_BUF, reader);
    let mut writer = BufWriter::with_capacity(WRITE_BUF, writer);
    tracing::debug!("connected");
    let timeout = shared.config.handshake_timeout;
    let negotiated = tokio::select! {
        _ = stopped(&mut stop) => {
            tracing::info!("server stopping: closing a connection still negotiating");
            return;
        }
        r = tokio::time::timeout(timeout, handshake(&shared, &mut reader, &mut writer)) => {
            r.unwrap_or(Err(ConnError::HandshakeTimeout(timeout)))
        }
    };
    let export = match negotiated {
        Ok(Some(export)) => export,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("closing connection during the handshake: {e}");
            return;
        }
    };
    let span = tracing::info_span!("export", name = %export.name());
    tracing::info!(export = %export.name(), "client attached");
    transmission(&shared, export, reader, writer, stop)
        .instrument(span)
        .await;
}

/// Serve a connection that starts in the transmission phase: the kernel's NBD client,
/// which is handed a socket this process negotiated for it (`super::kernel`).
pub(super) async fn serve_transmission<D, R, W>(
    shared: Arc<Shared<D>>,
    export: Arc<Export<D>>,
    reader: R,
    writer: W,
    stop: watch::Receiver<bool>,
) where
    D: BlockDevice + 'static,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let reader = BufReader::with_capacity(READ_BUF, reader);
    let writer = BufWriter::with_capacity(WRITE_BUF, writer);
    transmission(&shared, export, reader, writer, stop).await;
}

/// Reads are buffered so that small request headers do not cost a syscall each; 64 KiB
/// also takes a typical WRITE payload in one read.
const READ_BUF: usize = 64 << 10;
/// Replies are batched up to this much before a write to the socket.
const WRITE_BUF: usize = 64 << 10;

/// Fill `buf` completely. `Ok(false)` when the peer closed cleanly before the first byte.
async fn read_msg<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: impl FnOnce() -> String,
) -> Result<bool, ConnError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(ConnError::Truncated {
                what: what(),
                got,
                want: buf.len(),
            });
        }
        got += n;
    }
    Ok(true)
}

/// As [`read_msg`], where a clean close is also a truncation.
async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: impl Fn() -> String,
) -> Result<(), ConnError> {
    if read_msg(r, buf, &what).await? || buf.is_empty() {
        Ok(())
    } else {
        Err(ConnError::Truncated {
            what: what(),
            got: 0,
            want: buf.len(),
        })
    }
}

/// Fixed newstyle negotiation. `Ok(None)`: the client ended it (ABORT, or closed).
async fn handshake<D, R, W>(
    shared: &Shared<D>,
    r: &mut R,
    w: &mut W,
) -> Result<Option<Arc<Export<D>>>, ConnError>
where
    D: BlockDevice,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&greeting()).await?;
    w.flush().await?;
    let mut flags = [0u8; 4];
    if !read_msg(r, &mut flags, || "the client flags".into()).await? {
        tracing::debug!("peer closed before sending client flags");
        return Ok(None);
    }
    let flags = u32::from_be_bytes(flags);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ConnError::Protocol(format!(
            "unknown client flags {flags:#010x}: not an NBD client, or a newer protocol"
        )));
    }
    if flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ConnError::Protocol(format!(
            "client flags {flags:#010x} lack NBD_FLAG_C_FIXED_NEWSTYLE; only fixed newstyle negotiation is served"
        )));
    }
    let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
    let mut out = BytesMut::new();
    loop {
        let mut hdr = [0u8; OptionHeader::LEN];
        if !read_msg(r, &mut hdr, || "an option header".into()).await? {
            tracing::debug!("peer closed during option haggling");
            return Ok(None);
        }
        let opt = OptionHeader::decode(&hdr);
        if opt.magic != IHAVEOPT {
            return Err(ConnError::Protocol(format!(
                "option magic {:#018x} is not IHAVEOPT: garbage, not an NBD client",
                opt.magic
            )));
        }
        let name = option_name(opt.option);
        if opt.len > MAX_OPTION_LEN {
            return Err(ConnError::Protocol(format!(
                "{name} with {} bytes of data exceeds the {MAX_OPTION_LEN}-byte limit",
                opt.len
            )));
        }
        let mut data = vec![0u8; opt.len as usize];
        read_exact(r, &mut data, || format!("the data of {name}")).await?;
        tracing::debug!(option = %name, len = opt.len, "option");
        out.clear();
        match opt.option {
            OPT_EXPORT_NAME => {
                let requested = String::from_utf8_lossy(&data).into_owned();
                let Some(export) = find(shared, &requested) else {
                    return Err(ConnError::UnknownExport(requested));
                };
                let info = export.info();
                out.put_u64(info.size);
                out.put_u16(transmission_flags(shared, &info));
                if !no_zeroes {
                    out.put_bytes(0, EXPORT_NAME_PAD);
                }
                w.write_all(&out).await?;
                w.flush().await?;
                return Ok(Some(export));
            }
            OPT_ABORT => {
                option_reply(&mut out, opt.option, REP_ACK, &[]);
                // The client may already have gone; that is fine.
                let _ = w.write_all(&out).await;
                let _ = w.flush().await;
                tracing::debug!("client aborted the negotiation");
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    error_reply(
                        &mut out,
                        opt.option,
                        REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    );
                } else {
                    for e in shared.exports.list() {
                        let mut d = BytesMut::new();
                        d.put_u32(e.name().len() as u32);
                        d.put_slice(e.name().as_bytes());
                        if let Some(desc) = e.description() {
                            d.put_slice(desc.as_bytes());
                        }
                        option_reply(&mut out, opt.option, REP_SERVER, &d);
                    }
                    option_reply(&mut out, opt.option, REP_ACK, &[]);
                }
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                Err(why) => error_reply(&mut out, opt.option, REP_ERR_INVALID, &why),
                Ok((requested, infos)) => match find(shared, &requested) {
                    None => {
                        let msg = format!(
                            "no export named {requested:?}; exports: {}",
                            shared.exports.names().join(", ")
                        );
                        tracing::info!("{name}: {msg}");
                        error_reply(&mut out, opt.option, REP_ERR_UNKNOWN, &msg);
                    }
                    Some(export) => {
                        info_replies(&mut out, shared, opt.option, &export, &infos);
                        if opt.option == OPT_GO {
                            w.write_all(&out).await?;
                            w.flush().await?;
                            return Ok(Some(export));
                        }
                    }
                },
            },
            _ => {
                let msg = format!("{name} is not supported by this server");
                error_reply(&mut out, opt.option, REP_ERR_UNSUP, &msg);
            }
        }
        w.write_all(&out).await?;
        w.flush().await?;
    }
}

fn error_reply(out: &mut BytesMut, option: u32, reply: u32, msg: &str) {
    option_reply(out, option, reply, msg.as_bytes());
}

/// The export a client named: an empty name is the default export, which exists when
/// exactly one map is exported.
fn find<D: BlockDevice>(shared: &Shared<D>, name: &str) -> Option<Arc<Export<D>>> {
    if name.is_empty() {
        let all = shared.exports.list();
        return match <[_; 1]>::try_from(all) {
            Ok([only]) => Some(only),
            Err(_) => None,
        };
    }
    shared.exports.get(name)
}

/// NBD_OPT_INFO/GO data: u32 name length, name, u16 count, count × u16 info types.
fn parse_info_request(data: &[u8]) -> Result<(String, Vec<u16>), String> {
    let bad = || format!("malformed NBD_OPT_INFO/GO data ({} bytes)", data.len());
    let name_len = data.get(..4).ok_or_else(bad)?;
    let name_len =
        u32::from_be_bytes([name_len[0], name_len[1], name_len[2], name_len[3]]) as usize;
    let name = data.get(4..4 + name_len).ok_or_else(bad)?;
    let rest = &data[4 + name_len..];
    let count = rest.get(..2).ok_or_else(bad)?;
    let count = u16::from_be_bytes([count[0], count[1]]) as usize;
    let list = &rest[2..];
    if list.len() != count * 2 {
        return Err(bad());
    }
    let infos = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let name =
        String::from_utf8(name.to_vec()).map_err(|_| "export name is not UTF-8".to_string())?;
    Ok((name, infos))
}

fn info_replies<D: BlockDevice>(
    out: &mut BytesMut,
    shared: &Shared<D>,
    option: u32,
    export: &Export<D>,
    requested: &[u16],
) {
    let info = export.info();
    let mut d = BytesMut::new();
    for &kind in requested {
        d.clear();
        match kind {
            INFO_NAME => {
                d.put_u16(INFO_NAME);
                d.put_slice(export.name().as_bytes());
            }
            INFO_DESCRIPTION => match export.description() {
                Some(desc) => {
                    d.put_u16(INFO_DESCRIPTION);
                    d.put_slice(desc.as_bytes());
                }
                None => continue,
            },
            INFO_BLOCK_SIZE => {
                let (min, preferred, max) = block_sizes(&info);
                d.put_u16(INFO_BLOCK_SIZE);
                d.put_u32(min);
                d.put_u32(preferred);
                d.put_u32(max);
            }
            // NBD_INFO_EXPORT is always sent below; unknown requests are ignored.
            _ => continue,
        }
        option_reply(out, option, REP_INFO, &d);
    }
    d.clear();
    d.put_u16(INFO_EXPORT);
    d.put_u64(info.size);
    d.put_u16(transmission_flags(shared, &info));
    option_reply(out, option, REP_INFO, &d);
    option_reply(out, option, REP_ACK, &[]);
}

/// Minimum, preferred and maximum block size: the logical block size (smaller requests
/// work, by read-modify-write, but cost a read); at least 4 KiB (a page, and what
/// filesystems write); the device's maximum transfer (larger requests work, split).
pub(super) fn block_sizes(info: &DeviceInfo) -> (u32, u32, u32) {
    let min = info.block_size.max(1);
    let max = (info.max_transfer / min * min).clamp(min, MAX_REQUEST / min * min);
    // Preferred must be a power of two no larger than the maximum.
    let largest_pow2 = 1u32 << (31 - max.leading_zeros());
    let preferred = min.max(4096).min(largest_pow2).max(min);
    (min, preferred, max)
}

pub(super) fn transmission_flags<D>(shared: &Shared<D>, info: &DeviceInfo) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES;
    if info.supports_discard {
        f |= FLAG_SEND_TRIM;
    }
    if shared.config.multi_conn {
        f |= FLAG_CAN_MULTI_CONN;
    }
    f
}

/// A validated request, ready to run.
#[derive(Debug)]
enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
        fua: bool,
    },
}

/// Check a request against the protocol and the export; the errno to answer otherwise.
/// Nothing here touches the device.
fn validate(req: &Request, data: Option<Bytes>, info: &DeviceInfo) -> Result<Op, (Errno, String)> {
    let known = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;
    if req.flags & !known != 0 {
        return Err((
            Errno::EINVAL,
            format!("unsupported command flags {:#06x}", req.flags),
        ));
    }
    if req.flags & CMD_FLAG_NO_HOLE != 0 && req.kind != CMD_WRITE_ZEROES {
        return Err((
            Errno::EINVAL,
            "NO_HOLE is only valid on WRITE_ZEROES".into(),
        ));
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let len = u64::from(req.len);
    let in_range = req
        .offset
        .checked_add(len)
        .is_some_and(|end| end <= info.size);
    let range_err = |errno: Errno| {
        (
            errno,
            format!(
                "offset {} length {} beyond the export's {} bytes",
                req.offset, req.len, info.size
            ),
        )
    };
    let nonzero = || {
        if req.len == 0 {
            Err((Errno::EINVAL, "zero-length request".to_string()))
        } else {
            Ok(())
        }
    };
    match req.kind {
        CMD_READ => {
            nonzero()?;
            if req.len > MAX_REQUEST {
                return Err((
                    Errno::EINVAL,
                    format!("READ of {} bytes exceeds {MAX_REQUEST}", req.len),
                ));
            }
            if !in_range {
                return Err(range_err(Errno::EINVAL));
            }
            Ok(Op::Read {
                offset: req.offset,
                len: req.len,
            })
        }
        CMD_WRITE => {
            nonzero()?;
            // The protocol document: ENOSPC for a write beyond the end.
            if !in_range {
                return Err(range_err(Errno::ENOSPC));
            }
            Ok(Op::Write {
                offset: req.offset,
                data: data.unwrap_or_default(),
                fua,
            })
        }
        CMD_FLUSH => Ok(Op::Flush),
        CMD_TRIM => {
            if !info.supports_discard {
                return Err((
                    Errno::EINVAL,
                    "TRIM was not advertised for this export".into(),
                ));
            }
            nonzero()?;
            if !in_range {
                return Err(range_err(Errno::EINVAL));
            }
            Ok(Op::Trim {
                offset: req.offset,
                len,
                fua,
            })
        }
        CMD_WRITE_ZEROES => {
            nonzero()?;
            if !in_range {
                return Err(range_err(Errno::ENOSPC));
            }
            Ok(Op::WriteZeroes {
                offset: req.offset,
                len,
                may_unmap: req.flags & CMD_FLAG_NO_HOLE == 0,
                fua,
            })
        }
        k => Err((
            Errno::EINVAL,
            format!("{} is not supported", command_name(k)),
        )),
    }
}

/// Run a validated request. FUA on TRIM and WRITE_ZEROES (block ops without a FUA bit) is a
/// FLUSH after them.
async fn execute<D: BlockDevice>(
    export: &Export<D>,
    op: Op,
) -> Result<Option<Bytes>, block::IoError> {
    let io = export.io();
    match op {
        Op::Read { offset, len } => io.read(offset, len).await.map(Some),
        Op::Write { offset, data, fua } => io.write(offset, data, fua).await.map(|_| None),
        Op::Flush => io.flush().await.map(|_| None),
        Op::Trim { offset, len, fua } => {
            io.discard(offset, len).await?;
            if fua {
                io.flush().await?;
            }
            Ok(None)
        }
        Op::WriteZeroes {
            offset,
            len,
            may_unmap,
            fua,
        } => {
            io.write_zeroes(offset, len, may_unmap).await?;
            if fua {
                io.flush().await?;
            }
            Ok(None)
        }
    }
}

/// What the writer task sends; the permits go back when the reply is written.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Bytes>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> std::io::Result<()> {
    while let Some(mut reply) = rx.recv().await {
        loop {
            w.write_all(&simple_reply(reply.error, reply.cookie))
                .await?;
            if let Some(d) = reply.data.take() {
                w.write_all(&d).await?;
            }
            drop(reply);
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// How the transmission phase ended.
enum End {
    Disc,
    Closed,
    Stopping,
    WriterGone,
    Error(ConnError),
}

async fn transmission<D, R, W>(
    shared: &Shared<D>,
    export: Arc<Export<D>>,
    mut reader: BufReader<R>,
    writer: BufWriter<W>,
    mut stop: watch::Receiver<bool>,
) where
    D: BlockDevice + 'static,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let mut writer_task = tokio::spawn(write_replies(writer, rx));
    let requests = Arc::new(Semaphore::new(config.max_in_flight));
    let bytes = Arc::new(Semaphore::new(config.max_in_flight_bytes as usize));
    let mut tasks = JoinSet::new();
    let mut hdr = [0u8; Request::LEN];
    let end = loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!("request task failed: {e}");
            }
        }
        let got = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break End::Stopping,
            _ = tx.closed() => break End::WriterGone,
            r = read_msg(&mut reader, &mut hdr, || "a request header".into()) => r,
        };
        match got {
            Ok(true) => {}
            Ok(false) => break End::Closed,
            Err(e) => break End::Error(e),
        }
        let req = Request::decode(&hdr);
        if req.magic != REQUEST_MAGIC {
            break End::Error(ConnError::Protocol(format!(
                "request magic {:#010x} is not {REQUEST_MAGIC:#010x}: garbage or a desynchronised stream",
                req.magic
            )));
        }
        if req.kind == CMD_DISC {
            break End::Disc;
        }
        if req.kind == CMD_WRITE && req.len > MAX_REQUEST {
            break End::Error(ConnError::Protocol(format!(
                "WRITE of {} bytes (cookie {:#x}) exceeds the {MAX_REQUEST}-byte limit",
                req.len, req.cookie
            )));
        }
        let cost = match req.kind {
            CMD_READ | CMD_WRITE => req.len.min(MAX_REQUEST),
            _ => 0,
        };
        let permits = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break End::Stopping,
            p = acquire(&requests, &bytes, cost) => p,
        };
        let data = if req.kind == CMD_WRITE {
            let mut buf = BytesMut::zeroed(req.len as usize);
            let r = read_exact(&mut reader, &mut buf, || {
                format!(
                    "the data of WRITE cookie {:#x} offset {} length {}",
                    req.cookie, req.offset, req.len
                )
            })
            .await;
            if let Err(e) = r {
                break End::Error(e);
            }
            Some(buf.freeze())
        } else {
            None
        };
        let export = Arc::clone(&export);
        let tx = tx.clone();
        tasks.spawn(async move {
            let info = export.info();
            let error = match validate(&req, data, &info) {
                Err((errno, why)) => {
                    tracing::debug!(
                        cookie = req.cookie,
                        "{} rejected with {errno}: {why}",
                        command_name(req.kind)
                    );
                    Err(errno)
                }
                Ok(op) => match execute(&export, op).await {
                    Ok(data) => Ok(data),
                    Err(e) => {
                        let errno = errno(&e);
                        tracing::warn!(
                            cookie = req.cookie,
                            offset = req.offset,
                            len = req.len,
                            "{} failed with {errno}: {e}",
                            command_name(req.kind)
                        );
                        Err(errno)
                    }
                },
            };
            let (error, data) = match error {
                Ok(data) => (0, data),
                Err(errno) => (errno.0 as u32, None),
            };
            // The writer may be gone (peer closed): the operation still completed.
            let _ = tx.send(Reply {
                cookie: req.cookie,
                error,
                data,
                _permits: Some(permits),
            });
        });
    };
    drop(tx);
    match &end {
        End::Disc => tracing::info!("client disconnected (NBD_CMD_DISC)"),
        End::Closed => tracing::info!("client closed the connection"),
        End::Stopping => tracing::info!("server stopping: finishing in-flight requests"),
        End::WriterGone => {}
        End::Error(e) => {
            tracing::warn!("closing connection: {e}; requests already submitted complete")
        }
    }
    // Requests already submitted run to the end whatever happened to the connection:
    // nothing is cancelled half-way through a multi-operation write.
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!("request task failed: {e}");
            }
        }
        match (&mut writer_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::info!("could not send every reply: {e}"),
            Err(e) => tracing::error!("reply writer failed: {e}"),
        }
    };
    // Bounded in every case: a peer that neither reads its replies nor closes must not
    // hold the connection (and its permits) forever.
    let limit = config.drain_timeout;
    if tokio::time::timeout(limit, drain).await.is_err() {
        tracing::warn!(
            "in-flight requests and their replies not finished within {limit:?}; \
             dropping the connection, device operations continue"
        );
        tasks.detach_all();
        writer_task.abort();
    }
}

async fn acquire(
    requests: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    cost: u32,
) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
    // Nothing closes these semaphores, so acquiring cannot fail.
    let r = Arc::clone(requests)
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let b = Arc::clone(bytes)
        .acquire_many_owned(cost)
        .await
        .expect("the semaphore is never closed");
    (r, b)
}
