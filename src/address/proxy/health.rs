//! The proxy's own active health checks of a backend (balance mode): a TCP connect, or for
//! HTTP listeners `GET path` answered 2xx/3xx, every `interval`; `fall` failures in a row take
//! the backend out, `rise` successes bring it back. They add to the cluster's checks: the
//! proxy may see a backend the cluster thinks fine fail (its own network path, overload).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::config::{HealthConfig, Protocol};
use super::upstream::Upstream;

/// Checks `up` until `cancel` fires.
pub fn spawn(
    listener: String,
    up: Arc<Upstream>,
    cfg: HealthConfig,
    protocol: Protocol,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut ok_run = 0u32;
        let mut fail_run = 0u32;
        up.set_check_ok(true);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(cfg.interval) => {}
            }
            let result = tokio::time::timeout(cfg.timeout, probe(&up, &cfg, protocol)).await;
            let ok = matches!(result, Ok(Ok(())));
            if ok {
                ok_run += 1;
                fail_run = 0;
                if !up.check_ok() && ok_run >= cfg.rise {
                    up.set_check_ok(true);
                    tracing::info!(listener = %listener, backend = %up.node, "backend passes its health check again");
                }
            } else {
                fail_run += 1;
                ok_run = 0;
                if up.check_ok() && fail_run >= cfg.fall {
                    up.set_check_ok(false);
                    let reason = match result {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {:?}", cfg.timeout),
                    };
                    tracing::warn!(listener = %listener, backend = %up.node, reason = %reason, "backend fails its health check");
                }
            }
        }
    });
}

async fn probe(up: &Upstream, cfg: &HealthConfig, protocol: Protocol) -> Result<(), String> {
    let mut s = TcpStream::connect(up.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if protocol == Protocol::Tcp {
        return Ok(());
    }
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: standin-proxy\r\nConnection: close\r\n\r\n",
        cfg.path, up.addr
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    // The status line's first 12 bytes: "HTTP/1.1 200".
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.map_err(|e| format!("read: {e}"))?;
        if r == 0 {
            return Err("connection closed before a status line".into());
        }
        n += r;
    }
    let line = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let code: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", &line[..line.len().min(20)]))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code}"))
    }
}
