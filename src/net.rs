//! Socket options shared by every listener (cluster transport, store, admin API, proxy): one
//! place that sets TCP keep-alive, so that a client or peer that vanished without a FIN (a
//! crashed host, a cut cable) frees its connection and buffers.

use tokio::net::TcpStream;

/// Keep-alive idle time of admin API, proxy control and proxy listener connections: long
/// answers (`/v1/watch`) keep a connection open without traffic for minutes.
pub const HTTP_KEEPALIVE_SECS: i32 = 60;

/// Turns on TCP keep-alive: after `idle_secs` without traffic, 3 probes `idle_secs / 3` apart
/// (at least 1 s; Redis's `tcp-keepalive` spacing). Best effort: a failure is logged.
pub fn keepalive(stream: &TcpStream, idle_secs: i32) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_secs.max(1)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, (idle_secs / 3).max(1)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ] {
        let value: libc::c_int = value;
        // SAFETY: `fd` is an open socket owned by `stream` for the duration of the call, and
        // the option value points at a live c_int of the size passed.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set TCP keep-alive");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Reads an int socket option through a duplicate descriptor (the option belongs to the
    /// socket both share).
    fn option(s: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is open for the call; `value` and `len` are live locals of
        // the sizes passed.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt");
        value
    }

    #[tokio::test]
    async fn keepalive_is_on_with_the_given_timings() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert_eq!(
            option(&accepted, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            0,
            "off by default"
        );
        keepalive(&accepted, 30);
        assert_ne!(option(&accepted, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        assert_eq!(option(&accepted, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
        assert_eq!(option(&accepted, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 10);
        assert_eq!(option(&accepted, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
    }
}
