//! PDUs over a TCP connection: a framing reader and a writer task.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi_pdu::{DecodeConfig, DecodeError, Pdu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Reads PDUs off the read half of a connection.
pub struct PduReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

/// Read buffer growth step: large enough for a 256 KiB Data-Out in a few reads.
const READ_CHUNK: usize = 256 << 10;

impl PduReader {
    pub fn new(rd: OwnedReadHalf) -> PduReader {
        PduReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The next PDU already buffered, without reading from the socket.
    pub fn buffered(&mut self, cfg: &DecodeConfig) -> Result<Option<Pdu>, DecodeError> {
        Pdu::decode(&mut self.buf, cfg)
    }

    /// Whether the peer has given the connection up — closed it (FIN) or reset it (RST) —
    /// judged from the socket's state, without reading what is still buffered before that.
    pub fn peer_gone(&self) -> bool {
        if matches!(self.rd.as_ref().take_error(), Ok(Some(_))) {
            return true;
        }
        tcp_state(self.rd.as_ref()).is_some_and(|s| s != TCP_ESTABLISHED)
    }

    /// Read more bytes from the socket. `Ok(false)` at end of stream.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.rd.read_buf(&mut self.buf).await? > 0)
    }

    /// The next PDU, reading as needed. `Ok(None)` at a clean end of stream.
    pub async fn next(
        &mut self,
        cfg: &DecodeConfig,
    ) -> std::io::Result<Option<Result<Pdu, DecodeError>>> {
        loop {
            match self.buffered(cfg) {
                Ok(Some(p)) => return Ok(Some(Ok(p))),
                Err(e) => return Ok(Some(Err(e))),
                Ok(None) => {}
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// `TCP_ESTABLISHED` of the kernel's `enum tcp_state` (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// The kernel's TCP state of a socket (`TCP_INFO`'s first field), if it can be read.
fn tcp_state(s: &tokio::net::TcpStream) -> Option<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it and
    // the fd is valid for the life of `s`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (r == 0 && len > 0).then_some(info.tcpi_state)
    }
}

enum Msg {
    Data { due: Option<Instant>, bytes: Bytes },
    Close { reset: bool },
}

/// Handle to the writer task of a connection. Bytes are written in the order given; with a
/// delay, each batch leaves `delay` after it was queued, so pipelining is kept.
#[derive(Clone)]
pub struct PduWriter {
    tx: mpsc::UnboundedSender<Msg>,
}

impl PduWriter {
    pub fn spawn(wr: OwnedWriteHalf) -> (PduWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let h = tokio::spawn(writer_task(wr, rx));
        (PduWriter { tx }, h)
    }

    /// Queue bytes; returns false when the writer has stopped (connection gone).
    pub fn send(&self, bytes: Bytes, delay: Option<Duration>) -> bool {
        let due = delay.map(|d| Instant::now() + d);
        self.tx.send(Msg::Data { due, bytes }).is_ok()
    }

    /// Close after what is queued (`reset`: abortively, with an RST, right away).
    pub fn close(&self, reset: bool) {
        let _ = self.tx.send(Msg::Close { reset });
    }
}

async fn writer_task(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Msg>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Data { due, bytes } => {
                if let Some(due) = due {
                    tokio::time::sleep_until(due).await;
                }
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Msg::Close { reset } => {
                if reset {
                    // SO_LINGER 0: close sends RST instead of FIN.
                    #[allow(deprecated)]
                    let _ = wr.as_ref().set_linger(Some(Duration::ZERO));
                    // Dropping a write half shuts it down, which sends a FIN before the
                    // RST: the initiator would read a clean end of stream. Leave the socket
                    // to close (with the RST) when the read half is dropped.
                    wr.forget();
                    return;
                }
                let _ = wr.shutdown().await;
                break;
            }
        }
    }
}
