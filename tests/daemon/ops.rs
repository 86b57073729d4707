//! Operations: the systemd protocols against the real daemon (notifications received on a test
//! datagram socket, socket activation with a descriptor the test passes), and the JSON log
//! format on stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// A datagram socket standing in for systemd's notification socket: a thread collects every
/// message swapd sends, in order.
struct NotifySocket {
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// The value for `NOTIFY_SOCKET`.
    address: String,
    _dir: TempDir,
}

impl NotifySocket {
    /// A socket file in a temp dir.
    fn path() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        NotifySocket::collect(socket, path.to_str().expect("utf-8").to_string(), dir)
    }

    /// A Linux abstract socket (`@name`), as systemd uses for user services.
    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "swapd-test-notify-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract socket");
        NotifySocket::collect(socket, format!("@{name}"), TempDir::new("notify"))
    }

    fn collect(socket: UnixDatagram, address: String, dir: TempDir) -> NotifySocket {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (messages, stop) = (messages.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(length) = socket.recv(&mut buffer) {
                        let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                        messages.lock().expect("messages lock").push(text);
                    }
                }
            });
        }
        NotifySocket {
            messages,
            stop,
            address,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().expect("messages lock").clone()
    }

    /// Waits for a message (at index `from` or later) satisfying `matches`; returns its index.
    fn wait(&self, what: &str, from: usize, matches: impl Fn(&str) -> bool) -> usize {
        wait_for(what, Duration::from_secs(20), || {
            self.all()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, message)| matches(message))
                .map(|(index, _)| index)
        })
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `KEY=value` fields of one notification.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// The environment of a process, as `KEY=value` strings.
fn environment_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|bytes| {
            bytes
                .split(|byte| *byte == 0)
                .map(|entry| String::from_utf8_lossy(entry).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn notify_reports_ready_status_reload_and_stopping() {
    let socket = NotifySocket::path();
    let config = simple_config(&["a", "b"], "", "");
    let mut daemon = Daemon::start_with_env(&config, &[], &[("NOTIFY_SOCKET", &socket.address)]);

    let ready = socket.wait("READY=1", 0, |m| field(m, "READY") == Some("1"));
    socket.wait("a status with the model counts", 0, |m| {
        field(m, "STATUS") == Some("serving 2 models, 0 loaded")
    });
    // READY=1 means listening: a request right after it is served.
    assert_eq!(get(&daemon.url("/health")).status, 200);

    // Loading a model changes the status line.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    socket.wait("the status after a load", ready, |m| {
        field(m, "STATUS") == Some("serving 2 models, 1 loaded")
    });
    // The model server does not inherit the notification socket.
    let child = daemon.pid_of("a").expect("a runs");
    let environment = environment_of(child);
    assert!(
        !environment.is_empty(),
        "environment of pid {child} readable"
    );
    assert!(
        !environment
            .iter()
            .any(|entry| entry.starts_with("NOTIFY_SOCKET=")),
        "the child inherited NOTIFY_SOCKET: {environment:?}"
    );

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
    let before = socket.all().len();
    kill(daemon.pid(), libc::SIGHUP);
    let reloading = socket.wait("RELOADING=1 after SIGHUP", before, |m| {
        field(m, "RELOADING") == Some("1")
    });
    let message = socket.all()[reloading].clone();
    let usec: u64 = field(&message, "MONOTONIC_USEC")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC missing or not a number in {message:?}"));
    assert!(usec > 0);
    socket.wait("READY=1 after the reload", reloading + 1, |m| {
        field(m, "READY") == Some("1")
    });

    // A reload through the API is announced the same way.
    let before = socket.all().len();
    let reply = post_json(&daemon.url("/api/config/reload"), &serde_json::json!({}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reloading = socket.wait("RELOADING=1 after the API reload", before, |m| {
        field(m, "RELOADING") == Some("1")
    });
    socket.wait("READY=1 after the API reload", reloading + 1, |m| {
        field(m, "READY") == Some("1")
    });

    // SIGTERM: STOPPING=1 comes before swapd exits.
    let before = socket.all().len();
    assert_eq!(daemon.terminate(), Some(0));
    let stopping = socket.wait("STOPPING=1", before, |m| field(m, "STOPPING") == Some("1"));
    assert!(
        socket.all()[before..stopping]
            .iter()
            .all(|m| field(m, "READY").is_none()),
        "no READY=1 between the signal and STOPPING=1: {:?}",
        socket.all()
    );
}

#[test]
fn notify_reaches_an_abstract_socket() {
    let socket = NotifySocket::abstract_name();
    let config = simple_config(&["a"], "", "");
    let daemon = Daemon::start_with_env(&config, &[], &[("NOTIFY_SOCKET", &socket.address)]);
    socket.wait("READY=1 on the abstract socket", 0, |m| {
        field(m, "READY") == Some("1")
    });
    socket.wait("the status on the abstract socket", 0, |m| {
        field(m, "STATUS") == Some("serving 1 model, 0 loaded")
    });
    drop(daemon);
}

#[test]
fn watchdog_pings_keep_coming_at_half_the_timeout() {
    let socket = NotifySocket::path();
    let config = simple_config(&["a"], "", "");
    // 400 ms timeout: pings every 200 ms. Several must arrive; how punctually is not asserted
    // (the machine may be loaded), only that they keep coming while swapd idles and serves.
    let daemon = Daemon::start_with_env(
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", &socket.address),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let pings = |messages: &[String]| messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    wait_for(
        "3 watchdog pings while idle",
        Duration::from_secs(30),
        || (pings(&socket.all()) >= 3).then_some(()),
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let after_request = pings(&socket.all());
    wait_for(
        "3 more watchdog pings after a request",
        Duration::from_secs(30),
        || (pings(&socket.all()) >= after_request + 3).then_some(()),
    );
    drop(daemon);

    // A watchdog meant for another process (WATCHDOG_PID) is not pinged; READY=1 still is.
    // The model's 1 s ttl gives the proof that the window was long enough: its unload comes
    // from the same supervisor loop that would send the pings (every 200 ms), at least a second
    // after the load, and the status line announcing it arrives after any ping sent before it.
    let other = NotifySocket::path();
    let daemon = Daemon::start_with_env(
        &simple_config(&["a"], "    ttl: 1\n", ""),
        &[],
        &[
            ("NOTIFY_SOCKET", &other.address),
            ("WATCHDOG_USEC", "400000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    other.wait("READY=1", 0, |m| field(m, "READY") == Some("1"));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let loaded = other.wait("the status after a load", 0, |m| {
        field(m, "STATUS") == Some("serving 1 model, 1 loaded")
    });
    other.wait("the status after the ttl unload", loaded + 1, |m| {
        field(m, "STATUS") == Some("serving 1 model, 0 loaded")
    });
    assert_eq!(pings(&other.all()), 0, "{:?}", other.all());
}

/// swapd started the way systemd starts an activated service: `listener` as descriptor 3,
/// `LISTEN_FDS=1` and `LISTEN_PID` = its own pid. A shell sets `LISTEN_PID=$$` and execs swapd
/// (same pid), since the child's pid is not known before the fork and `pre_exec` may not
/// allocate or touch the environment.
fn spawn_activated(listener: &TcpListener, config_path: &std::path::Path) -> Child {
    let fd = listener.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(SWAPD)
        .arg("--config")
        .arg(config_path)
        // Ignored under socket activation; an address that could not be bound proves it.
        .arg("--listen")
        .arg("256.0.0.1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pass_as_descriptor_3(&mut command, fd);
    command
        .spawn()
        .expect("start swapd under socket activation")
}

/// Stops a swapd this test started (SIGTERM, bounded wait, then SIGKILL), and the model
/// servers it left, whatever happens in the test.
struct Stopper {
    child: Child,
    dir: String,
}

impl Stopper {
    fn stop(&mut self) -> Option<i32> {
        kill(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        let children: Vec<u32> = pids_with_cmdline(&self.dir)
            .into_iter()
            .filter(|&pid| pid != self.child.id())
            .collect();
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        for pid in children {
            kill(pid, libc::SIGKILL);
        }
    }
}

/// Reads swapd's stderr until the "listening on" line; returns the address.
fn listening_address(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("swapd: listening on http://") {
                let _ = tx.send(Ok(addr.to_string()));
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(stderr)) => panic!("swapd exited without listening; stderr:\n{stderr}"),
        Err(_) => panic!("swapd did not report listening within 20 s"),
    }
}

/// The inode of a socket descriptor of this process, as `/proc/*/fd` links show it.
fn socket_link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .expect("read the socket link")
        .to_string_lossy()
        .into_owned()
}

fn descriptor_links(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .map(|link| link.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn socket_activation_serves_on_the_passed_socket_and_keeps_it_across_restarts() {
    let dir = TempDir::new("activation");
    let dir_text = dir.path().to_str().expect("utf-8").to_string();
    let config = simple_config(&["a"], "", "")
        .replace("{FAKE}", FAKE)
        .replace("{DIR}", &dir_text);
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test's listener");
    let port = listener.local_addr().expect("address").port();
    let listener_link = socket_link(listener.as_raw_fd());

    let mut first = Stopper {
        child: spawn_activated(&listener, &config_path),
        dir: dir_text.clone(),
    };
    let addr = listening_address(&mut first.child);
    assert_eq!(
        addr,
        format!("127.0.0.1:{port}"),
        "swapd uses the passed socket"
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(get(&url("/health")).body, "OK");
    let reply = post_json(&url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The model server inherits neither the socket nor the activation variables.
    let model_pid = reply.json()["pid"].as_u64().expect("pid in the reply") as u32;
    assert!(
        !descriptor_links(model_pid).contains(&listener_link),
        "the model server holds the listening socket {listener_link}"
    );
    let environment = environment_of(model_pid);
    assert!(
        !environment
            .iter()
            .any(|entry| entry.starts_with("LISTEN_FDS=") || entry.starts_with("LISTEN_PID=")),
        "{environment:?}"
    );

    assert_eq!(first.stop(), Some(0), "swapd exits cleanly");

    // swapd did not shut the socket down: a connection made while no swapd runs waits in its
    // queue, and the next swapd given the same socket answers it.
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).expect("connect while stopped");
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send while stopped");
    let mut second = Stopper {
        child: spawn_activated(&listener, &config_path),
        dir: dir_text.clone(),
    };
    listening_address(&mut second.child);
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = waiting.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("OK"),
        "{answer:?}"
    );
    assert_eq!(second.stop(), Some(0));
}

#[test]
fn socket_activation_refuses_a_descriptor_that_is_not_a_listening_tcp_socket() {
    let dir = TempDir::new("activation-bad");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        &config_path,
        simple_config(&["a"], "", "")
            .replace("{FAKE}", FAKE)
            .replace("{DIR}", dir.path().to_str().expect("utf-8")),
    )
    .expect("write config");
    // A bound but not listening UDP socket as descriptor 3.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let fd = udp.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(SWAPD)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pass_as_descriptor_3(&mut command, fd);
    let child = command.spawn().expect("start swapd");
    let mut guard = Stopper {
        child,
        dir: dir.path().to_str().expect("utf-8").to_string(),
    };
    let status = wait_for("swapd to exit", Duration::from_secs(20), || {
        guard.child.try_wait().ok().flatten()
    });
    // swapd has exited (and started no children), so its stderr is at its end.
    let mut stderr = String::new();
    guard
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a stream socket"),
        "the error names the problem: {stderr}"
    );
}

#[test]
fn json_log_format_writes_objects_to_stdout_and_keeps_logs_human() {
    let dir = TempDir::new("json-logs");
    let dir_text = dir.path().to_str().expect("utf-8").to_string();
    let config = simple_config(&["a"], "", "swapd:\n  logFormat: json\n")
        .replace("{FAKE}", FAKE)
        .replace("{DIR}", &dir_text);
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = Command::new(SWAPD)
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start swapd");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut guard = Stopper {
        child,
        dir: dir_text,
    };
    let addr = listening_address(&mut guard.child);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lines lock").push(line);
            }
        });
    }
    let reply = post_json(&format!("http://{addr}/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The start of model a is logged with the model named in its own field.
    let ready = wait_for(
        "a JSON line saying a is ready",
        Duration::from_secs(20),
        || {
            lines
                .lock()
                .expect("lines lock")
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|value| {
                    value["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("a is ready"))
                })
        },
    );
    assert_eq!(ready["model"], "a", "{ready}");
    assert_eq!(ready["level"], "info");
    assert_eq!(ready["target"], "swapd::supervisor");
    let time = ready["time"].as_str().expect("time is a string");
    assert!(
        time.len() == "2026-12-06T03:52:17.123Z".len()
            && time.ends_with('Z')
            && &time[10..11] == "T",
        "RFC 3339 time: {time}"
    );
    // The request line names the model too.
    wait_for("the request's JSON line", Duration::from_secs(20), || {
        lines
            .lock()
            .expect("lines lock")
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|value| {
                value["model"] == "a"
                    && value["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("/v1/chat/completions"))
            })
    });

    // /logs keeps the human form.
    let logs = get(&format!("http://{addr}/logs")).body;
    assert!(logs.contains("[INFO] a is ready"), "{logs}");
    assert!(!logs.contains("\"message\""), "{logs}");

    assert_eq!(guard.stop(), Some(0));
    // Every line swapd wrote to stdout, up to its exit, is one JSON object with the fields.
    let lines = wait_for("stdout closed", Duration::from_secs(10), || {
        let lines = lines.lock().expect("lines lock").clone();
        lines
            .iter()
            .any(|line| line.contains("swapd stopped"))
            .then_some(lines)
    });
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["time", "level", "target", "message"] {
            assert!(value[key].is_string(), "{key} missing in {line}");
        }
    }
}

#[test]
fn the_packaged_config_checks_clean() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/swapd.yaml");
    let output = Command::new(SWAPD)
        .args(["--check-config", path])
        .output()
        .expect("run swapd --check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("qwen"));
}

/// Makes `fd` the child's descriptor 3, the first one systemd passes (`SD_LISTEN_FDS_START`).
fn pass_as_descriptor_3(command: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: only dup2 and fcntl, which are async-signal-safe, run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep close-on-exec; clear it instead.
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
