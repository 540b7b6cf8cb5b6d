//! TCP forwarding: one backend per connection, bytes both ways until either side closes, the
//! backend is retired (failover: at once; planned switchover: after the drain timeout) or the
//! proxy stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::listener::ListenerRt;

pub async fn serve(l: Arc<ListenerRt>, mut client: TcpStream) {
    let settings = l.settings();
    let Some((up, kill, mut server)) = l.connect(&settings.cfg).await else {
        l.counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(listener = %l.name, "no backend; connection closed");
        return;
    };
    drop(settings);
    l.counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = up.enter();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            if let Err(e) = r {
                tracing::debug!(listener = %l.name, backend = %up.node, error = %e, "connection ended with an error");
            }
        }
        _ = kill.cancelled() => {
            tracing::debug!(listener = %l.name, backend = %up.node, "connection closed: backend replaced");
        }
        _ = l.shutdown.cancelled() => {}
    }
    l.counters.open.fetch_sub(1, Ordering::Relaxed);
}
