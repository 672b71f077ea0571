//! systemd readiness notification (`Type=notify`), without libsystemd.
//!
//! When systemd starts `meshgate run` it passes the path of a unix datagram
//! socket in `NOTIFY_SOCKET`; the service writes `READY=1` there once its
//! listeners are up, and `STOPPING=1` when it starts to drain. The protocol
//! is one datagram of `KEY=VALUE` lines (sd_notify(3)), so a std
//! `UnixDatagram` is all it takes. Without `NOTIFY_SOCKET` (not started by
//! systemd, or `Type=simple`) nothing is sent. A failed send is logged and
//! never stops the gateway: readiness is a courtesy to the supervisor.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells systemd `READY=1` (called once pingora reports its services
/// running, see [`crate::server::when_running`]).
pub(crate) fn ready() {
    notify("READY=1");
}

/// Tells systemd `STOPPING=1`. Called by the drain on SIGTERM before it
/// waits, on the same thread: a phase watcher of its own could lose the
/// race against the drain's `exit`.
pub(crate) fn stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy();
    match send(&target, state) {
        Ok(()) => tracing::debug!(state, "told systemd"),
        Err(e) => tracing::warn!(socket = %target, state, "cannot notify systemd: {e}"),
    }
}

/// Sends one notification datagram to `target`: a socket path, or an
/// abstract socket name written with a leading `@`.
fn send(target: &str, state: &str) -> io::Result<()> {
    let addr = address(target)?;
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

fn address(target: &str) -> io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        abstract_address(name)
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
        ))
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &str) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &str) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("meshgate-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(path.to_str().expect("utf-8 path"), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("meshgate-notify-test-{}", std::process::id());
        let addr = abstract_address(&name).expect("abstract address");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        send(&format!("@{name}"), "STOPPING=1").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_socket_name() {
        assert!(address("notify.sock").is_err());
    }
}
