//! A TCP fault proxy for tests: put it between an initiator and any target (ours or a
//! peer's) and break the path on demand — silently, loudly, slowly, or in one direction.
//!
//! It runs on a thread of its own with its own runtime, so synchronous tests and tests on
//! any tokio runtime can use it alike. Faults apply to open connections and new ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProxyFault {
    /// Forward everything.
    #[default]
    Pass,
    /// Forward nothing, in either direction; keep every socket open (a network blackhole:
    /// when it clears, what was held flows on, as TCP retransmission would deliver it).
    Blackhole,
    /// Forward only initiator → target (answers are lost in the network).
    DropToInitiator,
    /// Forward only target → initiator.
    DropToTarget,
    /// Delay every chunk by this much in each direction (pipelining kept).
    Delay(Duration),
    /// Delay only target → initiator traffic (the answers).
    DelayToInitiator(Duration),
}

struct State {
    fault: ProxyFault,
    /// Bumped to reset every open connection (RST both ways).
    resets: u64,
}

/// A running proxy. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    tx: Arc<watch::Sender<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listen on `listen` (port 0 for a free one) and forward to `upstream`.
    pub fn start(listen: &str, upstream: SocketAddr) -> FaultProxy {
        let tx = Arc::new(watch::Sender::new(State {
            fault: ProxyFault::Pass,
            resets: 0,
        }));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let tx2 = tx.clone();
        let listen = listen.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let l = TcpListener::bind(&listen).await.expect("proxy listen");
                let _ = addr_tx.send(l.local_addr().expect("proxy addr"));
                let accept = async {
                    loop {
                        let Ok((c, _)) = l.accept().await else {
                            continue;
                        };
                        let rx = tx2.subscribe();
                        tokio::spawn(async move {
                            if let Ok(s) = TcpStream::connect(upstream).await {
                                relay(c, s, rx).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("proxy started");
        FaultProxy {
            addr,
            tx,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where initiators connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: ProxyFault) {
        self.tx.send_modify(|s| s.fault = fault);
    }

    /// Reset every open connection, both ways, with an RST.
    pub fn reset(&self) {
        self.tx.send_modify(|s| s.resets += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay(c: TcpStream, s: TcpStream, rx: watch::Receiver<State>) {
    let _ = c.set_nodelay(true);
    let _ = s.set_nodelay(true);
    let born = rx.borrow().resets;
    let (cr, cw) = c.into_split();
    let (sr, sw) = s.into_split();
    let up = pump(cr, sw, rx.clone(), true, born);
    let down = pump(sr, cw, rx, false, born);
    tokio::join!(up, down);
}

/// Copy one direction, obeying the fault.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<State>,
    to_target: bool,
    born: u64,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Wait while this direction is stopped; leave on a reset.
        loop {
            let (fault, resets) = {
                let s = rx.borrow();
                (s.fault, s.resets)
            };
            if resets != born {
                #[allow(deprecated)]
                let _ = w.as_ref().set_linger(Some(Duration::ZERO));
                // Dropping the halves without shutdown sends the RST.
                std::mem::forget(r);
                drop(w);
                return;
            }
            let stopped = match fault {
                ProxyFault::Blackhole => true,
                ProxyFault::DropToInitiator => !to_target,
                ProxyFault::DropToTarget => to_target,
                _ => false,
            };
            if !stopped {
                break;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = w.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = rx.changed() => continue,
        };
        let arrived = Instant::now();
        // A fault set while the bytes were in flight still applies to them.
        loop {
            let (fault, resets) = {
                let s = rx.borrow();
                (s.fault, s.resets)
            };
            if resets != born {
                break;
            }
            match fault {
                ProxyFault::Blackhole => {}
                ProxyFault::DropToInitiator if !to_target => {}
                ProxyFault::DropToTarget if to_target => {}
                ProxyFault::Delay(d) => {
                    tokio::time::sleep_until(arrived + d).await;
                    break;
                }
                ProxyFault::DelayToInitiator(d) if !to_target => {
                    tokio::time::sleep_until(arrived + d).await;
                    break;
                }
                _ => break,
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
        if rx.borrow().resets != born {
            continue;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
