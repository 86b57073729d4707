//! The two systemd protocols swapd speaks, without libsystemd: `sd_notify` (readiness, reload,
//! stopping, status lines and the watchdog, as datagrams to `$NOTIFY_SOCKET`) and socket
//! activation (`$LISTEN_FDS`: the listening socket arrives as descriptor 3).
//!
//! Both are tiny wire protocols (see `sd_notify(3)` and `sd_listen_fds(3)`), so they are written
//! here with std and libc rather than adding a dependency. Outside systemd neither variable is
//! set and everything here does nothing. The environment variables are removed once read, as
//! `sd_notify`'s `unset_environment` does, so the model servers swapd starts do not inherit them
//! (a child that saw `NOTIFY_SOCKET` could claim readiness on swapd's behalf; one that saw
//! `LISTEN_FDS` could go looking for a descriptor that is not there).

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where `$NOTIFY_SOCKET` points: a socket file, or (with a leading `@`) a Linux abstract
/// socket name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`. systemd only ever passes absolute paths or `@` names; anything else
/// (e.g. a `vsock:` address, which swapd does not speak) is refused with a reason.
pub fn parse_notify_socket(value: &str) -> Result<NotifyTarget, String> {
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err("NOTIFY_SOCKET names an empty abstract socket".to_string());
        }
        return Ok(NotifyTarget::Abstract(name.as_bytes().to_vec()));
    }
    if value.starts_with('/') {
        return Ok(NotifyTarget::Path(PathBuf::from(value)));
    }
    Err(format!(
        "NOTIFY_SOCKET '{value}' is neither an absolute path nor an abstract socket (@name)"
    ))
}

/// The watchdog period systemd expects pings within (`$WATCHDOG_USEC`), if it is meant for this
/// process (`$WATCHDOG_PID`, when set, must be our pid).
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How many descriptors systemd passed (`$LISTEN_FDS`), if they are meant for this process
/// (`$LISTEN_PID` must be our pid: the variables may have been inherited from a parent).
pub fn listen_fds(fds: Option<&str>, pid: Option<&str>, own_pid: u32) -> usize {
    let Some(pid) = pid.and_then(|pid| pid.trim().parse::<u32>().ok()) else {
        return 0;
    };
    if pid != own_pid {
        return 0;
    }
    fds.and_then(|fds| fds.trim().parse::<usize>().ok())
        .unwrap_or(0)
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The text of the `RELOADING=1` message: systemd wants the monotonic time of the reload with
/// it (`Type=notify-reload` requires it; plain `Type=notify` accepts it).
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the config")
}

/// The `STATUS=` text `systemctl status` shows, from the supervisor's model counts.
pub fn status_line(configured: usize, loaded: usize, starting: usize, stopping: bool) -> String {
    let models = if configured == 1 { "model" } else { "models" };
    if stopping {
        return format!("stopping: {loaded} of {configured} {models} still loaded");
    }
    let mut line = format!("serving {configured} {models}, {loaded} loaded");
    if starting > 0 {
        line.push_str(&format!(", {starting} starting"));
    }
    line
}

/// Sends notifications to systemd; does nothing when swapd was not started by it.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing (not under systemd, and in tests of other parts).
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
        }
    }

    /// Reads (and removes) `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. Call it before
    /// any other thread starts, since it changes the environment. A socket that cannot be
    /// used is reported in the returned message and notifications are off.
    pub fn from_environment() -> (Notifier, Option<String>) {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let Some(socket) = socket.filter(|value| !value.is_empty()) else {
            return (Notifier::disabled(), None);
        };
        let watchdog = watchdog_timeout(usec.as_deref(), pid.as_deref(), std::process::id());
        match Notifier::connect(&socket) {
            Ok(socket) => (
                Notifier {
                    socket: Some(socket),
                    watchdog,
                },
                None,
            ),
            Err(error) => (Notifier::disabled(), Some(error)),
        }
    }

    fn connect(value: &str) -> Result<(UnixDatagram, std::os::unix::net::SocketAddr), String> {
        let address = match parse_notify_socket(value)? {
            NotifyTarget::Path(path) => std::os::unix::net::SocketAddr::from_pathname(&path)
                .map_err(|error| format!("NOTIFY_SOCKET {value}: {error}"))?,
            #[cfg(target_os = "linux")]
            NotifyTarget::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .map_err(|error| format!("NOTIFY_SOCKET {value}: {error}"))?
            }
            #[cfg(not(target_os = "linux"))]
            NotifyTarget::Abstract(_) => {
                return Err(format!(
                    "NOTIFY_SOCKET {value}: abstract sockets exist only on Linux"
                ))
            }
        };
        let socket = UnixDatagram::unbound()
            .map_err(|error| format!("cannot create the notification socket: {error}"))?;
        // The supervisor loop sends the watchdog pings and must never block: a message that
        // does not fit in systemd's queue right now is dropped (the next one follows soon).
        socket.set_nonblocking(true).map_err(|error| {
            format!("cannot make the notification socket non-blocking: {error}")
        })?;
        Ok((socket, address))
    }

    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification (newline-separated `KEY=value` lines); best effort.
    pub fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(error) = socket.send_to_addr(message.as_bytes(), address) {
                log::debug!("systemd notification not delivered ({error}): {message:?}");
            }
        }
    }

    /// Listening, preloads started: systemd may start units ordered after swapd.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        if self.is_enabled() {
            self.send(&reloading_message(monotonic_usec()));
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub fn status(&self, line: &str) {
        // A status is one line: systemd would read a newline as the start of another field.
        if self.is_enabled() {
            self.send(&format!("STATUS={}", line.replace('\n', " ")));
        }
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
    /// advises, so one late ping does not get swapd killed. `None` when no watchdog is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        self.watchdog.map(|timeout| timeout / 2)
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

/// The listening socket systemd passed (socket activation), if any: descriptor 3 when
/// `LISTEN_PID` is our pid and `LISTEN_FDS` is at least 1. Reads and removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES`; call it before any other thread starts.
///
/// The socket must be a listening TCP socket (`ListenStream=` with an address, not a path).
/// It is made close-on-exec, so model servers do not inherit it and hold the port, and
/// blocking, as tiny_http's accept loop expects.
pub fn activated_listener() -> Result<Option<Activation>, String> {
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let count = listen_fds(fds.as_deref(), pid.as_deref(), std::process::id());
    if count == 0 {
        return Ok(None);
    }
    // Extra descriptors are not used; they must not leak into the children either.
    for extra in 1..count {
        set_cloexec(LISTEN_FDS_START + extra as RawFd);
    }
    let fd = LISTEN_FDS_START;
    check_listening_tcp(fd)?;
    set_cloexec(fd);
    // SAFETY: systemd handed descriptor 3 to this process (LISTEN_PID is ours), it was just
    // checked to be a listening TCP socket, and nothing else in swapd owns it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener
        .set_nonblocking(false)
        .map_err(|error| format!("the socket passed by systemd: {error}"))?;
    // The options proxy::bind sets on a socket of our own: accepted connections inherit
    // TCP_NODELAY, so small streamed chunks are not held back by Nagle's algorithm.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on the listening socket we now own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(Some(Activation {
        listener,
        passed: count,
    }))
}

/// The socket systemd passed, and how many it passed in all (only the first is used).
pub struct Activation {
    pub listener: TcpListener,
    pub passed: usize,
}

/// Refuses a descriptor 3 that is not a listening TCP stream socket, with a message naming
/// what is wrong (a `ListenStream=/path` unix socket or a forgotten `Accept=yes` are the usual
/// mistakes).
fn check_listening_tcp(fd: RawFd) -> Result<(), String> {
    let option = |level: libc::c_int, name: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int we own with its correct length.
        let result = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                &mut value as *mut _ as *mut libc::c_void,
                &mut length,
            )
        };
        if result == 0 {
            Ok(value)
        } else {
            Err(format!(
                "descriptor {fd} passed by systemd (LISTEN_FDS) is not a socket: {}",
                std::io::Error::last_os_error()
            ))
        }
    };
    if option(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(format!(
            "descriptor {fd} passed by systemd is not a stream socket (use ListenStream=)"
        ));
    }
    let domain = option(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(format!(
            "descriptor {fd} passed by systemd is not a TCP socket (ListenStream= needs an \
             address or port, not a path)"
        ));
    }
    if option(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1 {
        return Err(format!(
            "descriptor {fd} passed by systemd is not listening (use Accept=no)"
        ));
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor systemd passed to us; a bad descriptor only returns -1.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_addresses() {
        assert_eq!(
            parse_notify_socket("/run/systemd/notify"),
            Ok(NotifyTarget::Path(PathBuf::from("/run/systemd/notify")))
        );
        assert_eq!(
            parse_notify_socket("@/org/freedesktop/systemd1/notify/123"),
            Ok(NotifyTarget::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
        assert!(parse_notify_socket("@").is_err());
        assert!(parse_notify_socket("relative/path").is_err());
        assert!(parse_notify_socket("vsock:2:1234").is_err());
    }

    #[test]
    fn watchdog_timeouts() {
        assert_eq!(
            watchdog_timeout(Some("10000000"), None, 42),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            watchdog_timeout(Some("10000000"), Some("42"), 42),
            Some(Duration::from_secs(10))
        );
        // Inherited from a parent that was the watchdog's target: not ours.
        assert_eq!(watchdog_timeout(Some("10000000"), Some("41"), 42), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 42), None);
        assert_eq!(watchdog_timeout(Some("ten"), None, 42), None);
        assert_eq!(watchdog_timeout(None, Some("42"), 42), None);
    }

    #[test]
    fn listen_fd_counts() {
        assert_eq!(listen_fds(Some("1"), Some("42"), 42), 1);
        assert_eq!(listen_fds(Some("2"), Some("42"), 42), 2);
        assert_eq!(listen_fds(Some("1"), Some("41"), 42), 0);
        assert_eq!(listen_fds(Some("1"), None, 42), 0);
        assert_eq!(listen_fds(None, Some("42"), 42), 0);
        assert_eq!(listen_fds(Some("x"), Some("42"), 42), 0);
    }

    #[test]
    fn messages() {
        assert_eq!(
            reloading_message(123),
            "RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=reloading the config"
        );
        assert_eq!(status_line(3, 1, 0, false), "serving 3 models, 1 loaded");
        assert_eq!(
            status_line(3, 1, 1, false),
            "serving 3 models, 1 loaded, 1 starting"
        );
        assert_eq!(status_line(1, 0, 0, false), "serving 1 model, 0 loaded");
        assert_eq!(
            status_line(2, 2, 0, true),
            "stopping: 2 of 2 models still loaded"
        );
    }

    #[test]
    fn a_notifier_sends_datagrams_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("swapd-notify-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind the test socket");
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let (socket, address) =
            Notifier::connect(path.to_str().expect("utf-8 path")).expect("connect");
        let notifier = Notifier {
            socket: Some((socket, address)),
            watchdog: Some(Duration::from_secs(4)),
        };
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(2)));
        notifier.ready();
        notifier.status("two\nlines");
        let mut buffer = [0u8; 256];
        let length = receiver.recv(&mut buffer).expect("first datagram");
        assert_eq!(&buffer[..length], b"READY=1");
        let length = receiver.recv(&mut buffer).expect("second datagram");
        assert_eq!(&buffer[..length], b"STATUS=two lines");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Notifier::disabled().watchdog_interval(), None);
    }
}
