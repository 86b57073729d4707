//! Test harness: starts the real `swapd` binary on `127.0.0.1:0` with a config whose models run
//! the real `fake-upstream` binary, and stops everything by pid when a test ends, even when it
//! fails. Waits are polls with deadlines, never bare sleeps.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SWAPD: &str = env!("CARGO_BIN_EXE_swapd");
pub const FAKE: &str = env!("CARGO_BIN_EXE_fake-upstream");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "swapd-test-{}-{}-{}",
            tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `count` consecutive free ports, for `startPort`. They lie below Linux's ephemeral range
/// (32768 and up), so no outgoing connection can take one between this check and the model's
/// start.
pub fn free_port_range(count: u16) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let seed = (std::process::id() as usize * 7919) % 12_000;
    loop {
        let offset = NEXT.fetch_add(count as usize + 1, Ordering::Relaxed);
        let base = 20_000 + ((seed + offset) % 12_000) as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// Polls `check` every 10 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still "exists" for kill(0); read its state to tell.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of live processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if text.contains(needle) && pid_alive(pid) {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

pub fn kill(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a pid this test started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// A running swapd. Dropping it stops swapd (SIGTERM, then SIGKILL) and any child it left.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub dir: TempDir,
    pub stderr: Arc<Mutex<String>>,
    /// swapd's standard output, collected only for daemons started with
    /// [`Daemon::start_capturing_stdout`] (the others send it to /dev/null).
    pub stdout: Arc<Mutex<String>>,
    /// Set once swapd's standard output reached its end (only when it is collected).
    pub stdout_ended: Arc<std::sync::atomic::AtomicBool>,
    stopped: bool,
}

impl Daemon {
    /// Writes `config` (with `{FAKE}` and `{DIR}` replaced) and starts swapd on it.
    pub fn start(config: &str) -> Daemon {
        Daemon::start_with_args(config, &[])
    }

    pub fn start_with_args(config: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(config, extra, &[])
    }

    /// Starts swapd with its standard output collected in [`Daemon::stdout`].
    pub fn start_capturing_stdout(config: &str) -> Daemon {
        Daemon::launch(
            config,
            &[],
            &[],
            |command| {
                command.stdout(Stdio::piped());
            },
            true,
        )
    }

    /// Starts swapd with extra arguments and environment variables.
    pub fn start_with_env(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_customised(config, extra, env, |_| {})
    }

    /// Starts swapd, letting `customise` adjust the command first (e.g. a `pre_exec` that
    /// changes what swapd inherits).
    pub fn start_customised(
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        customise: impl FnOnce(&mut Command),
    ) -> Daemon {
        Daemon::launch(config, extra, env, customise, false)
    }

    /// `collect_stdout`: read swapd's (piped) stdout into [`Daemon::stdout`]; otherwise a
    /// piped stdout is left in `child` for the caller.
    fn launch(
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        customise: impl FnOnce(&mut Command),
        collect_stdout: bool,
    ) -> Daemon {
        let dir = TempDir::new("daemon");
        let config = config
            .replace("{FAKE}", FAKE)
            .replace("{DIR}", dir.path().to_str().expect("utf-8 temp path"));
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let mut command = Command::new(SWAPD);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        customise(&mut command);
        let mut child = command.spawn().expect("start swapd");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stdout_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(pipe) = collect_stdout.then(|| child.stdout.take()).flatten() {
            let (stdout, ended) = (stdout.clone(), stdout_ended.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    stdout.lock().expect("stdout lock").push_str(&(line + "\n"));
                }
                ended.store(true, Ordering::SeqCst);
            });
        }
        let stderr = child.stderr.take().expect("piped stderr");
        let collected = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = crossbeam_channel::unbounded();
        {
            let collected = collected.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("swapd: listening on http://") {
                        let _ = tx.send(addr.to_string());
                    }
                    collected
                        .lock()
                        .expect("stderr lock")
                        .push_str(&(line + "\n"));
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "swapd did not start; stderr:\n{}",
                    collected.lock().expect("stderr lock")
                );
            }
        };
        Daemon {
            child,
            addr,
            dir,
            stderr: collected,
            stdout,
            stdout_ended,
            stopped: false,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        kill(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stopped = true;
                panic!("swapd did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids of the fake upstreams this daemon started (their command line has our temp dir
    /// or the model's marker).
    pub fn children(&self) -> Vec<u32> {
        // With the trailing slash: temp dir `…-1` must not match another test's `…-12`, whose
        // swapd and children this daemon's drop would otherwise kill.
        pids_with_cmdline(&format!("{}/", self.dir.path().to_str().expect("utf-8")))
            .into_iter()
            .filter(|&pid| pid != self.pid())
            .collect()
    }

    pub fn running(&self) -> serde_json::Value {
        get_json(&self.url("/running"))
    }

    /// The `running` entries as (model, state).
    pub fn running_states(&self) -> Vec<(String, String)> {
        self.running()["running"]
            .as_array()
            .expect("running array")
            .iter()
            .map(|e| {
                (
                    e["model"].as_str().unwrap_or_default().to_string(),
                    e["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn wait_running(&self, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        wait_for(
            &format!("running == {expected:?}"),
            Duration::from_secs(20),
            || {
                let mut now: Vec<String> = self
                    .running_states()
                    .into_iter()
                    .filter(|(_, state)| state == "ready")
                    .map(|(m, _)| m)
                    .collect();
                now.sort();
                let all: usize = self.running_states().len();
                (now == expected && all == expected.len()).then_some(())
            },
        );
    }

    pub fn pid_of(&self, model: &str) -> Option<u32> {
        self.running()["running"]
            .as_array()?
            .iter()
            .find(|e| e["model"] == model)?["pid"]
            .as_u64()
            .map(|p| p as u32)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let children = self.children();
        if !self.stopped {
            kill(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    self.stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.stopped {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for pid in children {
            kill(pid, libc::SIGKILL);
        }
    }
}

/// The HTTP client for tests: statuses as data, short timeouts.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn to_reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("HTTP request failed at the transport level");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| format!("<body error: {e}>"));
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Reply {
    to_reply(agent().get(url).call())
}

pub fn get_json(url: &str) -> serde_json::Value {
    get(url).json()
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Reply {
    to_reply(
        agent()
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes()),
    )
}

pub fn post_raw(url: &str, content_type: &str, body: &[u8]) -> Reply {
    to_reply(
        agent()
            .post(url)
            .header("Content-Type", content_type)
            .send(body),
    )
}

pub fn post_with_headers(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = agent().post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    to_reply(request.send(body))
}

pub fn get_with_headers(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    to_reply(request.call())
}

pub fn chat(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Sends raw bytes on a new connection and returns everything read until EOF or `timeout`.
pub fn raw_exchange(addr: &str, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A streaming POST on a raw socket: returns the stream so the test can read it piecewise.
pub fn open_stream(addr: &str, path: &str, body: &serde_json::Value) -> TcpStream {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    stream
}

/// A config with fake-upstream models, one line per model id, in the default group.
pub fn simple_config(models: &[&str], extra_model_keys: &str, top: &str) -> String {
    let start_port = free_port_range(models.len() as u16);
    let mut config = format!("startPort: {start_port}\nhealthCheckTimeout: 15\n{top}\nmodels:\n");
    for model in models {
        let pid_file = model.replace('/', "_");
        config.push_str(&format!(
            "  {model}:\n    cmd: {{FAKE}} --port ${{PORT}} --model {model} --pid-file {{DIR}}/{pid_file}.pid\n{extra_model_keys}"
        ));
    }
    config
}

/// Reads until swapd closes the connection (EOF or reset); a read timing out (the socket's
/// timeout) means the connection was left open, and fails.
pub fn read_to_close(client: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the connection was not closed: {}",
                    String::from_utf8_lossy(&received)
                )
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}
