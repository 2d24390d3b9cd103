//! The systemd notify protocol (`sd_notify(3)`), without libsystemd: one datagram to
//! `$NOTIFY_SOCKET` per state change. `READY=1` once every listener is bound,
//! `WATCHDOG=1` at half the unit's `WatchdogSec` (see `watchdog.rs`), `STOPPING=1` at shutdown.
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` to the service manager; returns whether one was listening.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(abstract_name) = path.strip_prefix('@') {
        send_abstract(&socket, abstract_name, state)
    } else {
        socket.send_to(state.as_bytes(), &path).is_ok()
    };
    if !sent {
        log::warn!("could not tell systemd {state:?} through NOTIFY_SOCKET={path}");
    }
    sent
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &str, state: &str) -> bool {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> bool {
    false
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
