//! A TCP relay in front of one cluster path, which a test or benchmark can cut: it forwards
//! bytes both ways until cut, then drops them (a black hole, like a dead link: no reset, no
//! refusal). The harness puts relays in front of a node's second path
//! (`Spec::relay_second_path`) or of every path between every pair of nodes
//! (`Spec::partitionable`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running relay; dropping it stops it.
pub struct Relay {
    /// Where the relay listens: the address to give out instead of the target's.
    pub listen: SocketAddr,
    cut: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Relay {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("relay bind: {e}")))?;
        let listen = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let (c2, k2) = (cut.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    _ = k2.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (cut, cancel) = (c2.clone(), k2.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let a = pump(ri, wo, cut.clone(), cancel.clone());
                    let b = pump(ro, wi, cut, cancel);
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Ok(Relay { listen, cut, cancel })
    }

    /// Cuts the path (bytes are dropped) or mends it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
        };
        if cut.load(Ordering::SeqCst) {
            continue; // black hole
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
