//! The backend of `standin bench proxy`: the smallest HTTP/1.1 server hyper makes, answering
//! every request with the same 3-byte body, keep-alive unless the client asks to close.
//!
//! The demo service is lease-aware and answers through axum's router, a mutex and a
//! `format!`; that is right for the failover benchmark but is work the proxy comparison should
//! not measure. Started as the managed service of each node of the local cluster (hidden
//! subcommand `standin bench-backend`), so standin's proxy finds it as the active node's
//! service address; HAProxy and the direct rows use the same process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What every request gets unless told otherwise.
pub const BODY: &str = "ok\n";

/// Serves `answer` to every request until `cancel` fires or the parent process (the node
/// daemon, or the benchmark) goes away.
pub async fn run(listen: SocketAddr, answer: String, cancel: CancellationToken) -> std::io::Result<()> {
    let answer = Bytes::from(answer);
    let listener = TcpListener::bind(listen).await?;
    let parent = nix::unistd::getppid();
    let mut orphan_check = tokio::time::interval(Duration::from_millis(100));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = orphan_check.tick() => {
                // Re-parented: our daemon died, and a service must not outlive its supervisor.
                if nix::unistd::getppid() != parent {
                    return Ok(());
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                // Out of file descriptors or a connection reset before accept: keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let body = answer.clone();
        tokio::spawn(async move {
            let answer = service_fn(|_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            // A client going away mid-request is its business, not an error of the backend.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}
