//! Starting, signalling and reaping one upstream child process.
//!
//! Only the supervisor thread calls [`spawn`]: the parent-death signal set here fires when the
//! *spawning thread* exits, so children must come from that one long-lived thread. Each child
//! gets its own process group so a stop reaches grandchildren too, a reaper thread that owns the
//! `Child` and reports its exit, and two log reader threads that are never joined (a grandchild
//! may hold the pipes open forever).

use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::logbuf::LogBuffer;

/// A second destination for child output (the combined upstream log).
pub type AlsoWrite = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where a child's output goes: its model's buffer and, through `also`, the combined log.
#[derive(Clone)]
pub struct OutputSink {
    pub model_log: Arc<LogBuffer>,
    pub also: AlsoWrite,
}

/// Spawns `argv` with the inherited environment plus `env`, in a new process group, with
/// stdout and stderr captured line by line. `on_exit` runs on the reaper thread with the
/// exit status once the child has been reaped. Returns the pid (also the process group id).
pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    sink: OutputSink,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> io::Result<u32> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    prepare_child(&mut command, true);
    let mut child = command.spawn()?;
    let pid = child.id();
    // Each reader holds a sender and drops it at end of stream, so the channel disconnects once
    // both pipes reached EOF: a wait group the reaper can wait on with a deadline.
    let (output_open, output_done) = crossbeam_channel::bounded::<()>(0);
    // The reaper drops `exiting` once the child has exited, which ends the readers' batching
    // pauses at once: the exit report waits for their EOF, and a stop must not wait 5 ms more.
    let (exiting, exited) = crossbeam_channel::bounded::<()>(0);
    if let Some(stdout) = child.stdout.take() {
        let readers = (output_open.clone(), exited.clone());
        start_reader(stdout, sink.clone(), pid, "stdout", readers);
    }
    if let Some(stderr) = child.stderr.take() {
        start_reader(stderr, sink, pid, "stderr", (output_open, exited));
    }
    thread::Builder::new()
        .name(format!("reaper-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            // The exit is reported only after the child's last output is in its log, so a start
            // failure's message carries the child's last words, and no late line lands in the
            // log after the supervisor has cleared it (or in the next process's log). A
            // grandchild may hold the pipes open forever, hence the bound. The child stays a
            // zombie meanwhile (not reaped), so its pid, which names its process group, cannot
            // be reused while the supervisor may still signal that group.
            wait_for_exit_without_reaping(pid);
            drop(exiting);
            let deadline = std::time::Instant::now() + OUTPUT_DRAIN_LIMIT;
            while output_done.recv_deadline(deadline).is_ok() {}
            let status = child.wait().unwrap_or_else(|_| ExitStatus::from_raw(-1));
            on_exit(status);
        })?;
    Ok(pid)
}

/// Blocks until child `pid` has exited, leaving it unreaped (`WNOWAIT`): `Child::wait` reaps
/// it afterwards and reads its status.
fn wait_for_exit_without_reaping(pid: u32) {
    loop {
        // SAFETY: waitid only writes into the zeroed siginfo_t we own; `pid` is our own child,
        // which only this thread reaps.
        let result = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if result == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// How long an exit report waits for the child's stdout and stderr to reach end of stream.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// Sets what the forked child does before exec.
///
/// swapd blocks SIGTERM, SIGINT and SIGHUP in every thread (the signal thread takes them with
/// sigwait) and exec keeps a blocked mask, so a child must unblock them or SIGTERM could never
/// stop it. exec also keeps every *ignored* signal ignored: Rust ignores SIGPIPE, and a swapd
/// started under `nohup` (or by any parent that ignores SIGHUP, SIGINT, ...) would pass that
/// on, so every disposition goes back to its default. With `die_with_parent`,
/// PR_SET_PDEATHSIG makes the kernel SIGKILL the child when the spawning thread (the
/// supervisor) dies, so children never outlive a SIGKILLed swapd.
fn prepare_child(command: &mut Command, die_with_parent: bool) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl,
    // sigemptyset, sigprocmask and signal (sigaction), which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for signal in 1..SIGNAL_COUNT {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    // Fails (harmlessly) only for the C library's reserved real-time signals.
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
}

/// One more than the highest signal number on Linux (the kernel's `_NSIG`).
const SIGNAL_COUNT: libc::c_int = 65;

/// How long a log reader waits after passing output on before reading again.
const READ_BATCH_DELAY: Duration = Duration::from_millis(5);

/// Reads a pipe and writes whole lines into the sink. A line longer than the read buffer is
/// written in pieces; a partial last line is written at end of stream.
/// `open` is dropped once the pipe reached end of stream; `exited` disconnects when the child
/// has exited (no more batching pauses then).
fn start_reader(
    mut pipe: impl Read + Send + 'static,
    sink: OutputSink,
    pid: u32,
    which: &str,
    (open, exited): (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
) {
    let spawned = thread::Builder::new()
        .name(format!("log-{which}-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut filled = 0usize;
            loop {
                let read = match pipe.read(&mut buffer[filled..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                filled += read;
                let complete = match buffer[..filled].iter().rposition(|&b| b == b'\n') {
                    Some(last_newline) => last_newline + 1,
                    None if filled == buffer.len() => filled,
                    None => continue,
                };
                sink.model_log.write(&buffer[..complete]);
                (sink.also)(&buffer[..complete]);
                buffer.copy_within(complete..filled, 0);
                filled -= complete;
                // Lines that arrive in the next few milliseconds are read together: a server
                // that logs every request would otherwise wake this thread for every line.
                // The first line after a quiet spell is still passed on at once. Nothing is
                // ever sent on `exited`: the wait ends early only when the child has exited.
                let _ = exited.recv_timeout(READ_BATCH_DELAY);
            }
            if filled > 0 {
                sink.model_log.write(&buffer[..filled]);
                (sink.also)(&buffer[..filled]);
            }
            drop(open);
        });
    if let Err(error) = spawned {
        log::error!("cannot start the log reader for pid {pid}: {error}");
    }
}

/// Sends `signal` to the whole process group `pgid`.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill with a negative pid signals a process group; an error (ESRCH) only means the
    // group is already gone. The supervisor never signals a group after its leader was reaped
    // except to clean up right away, so the id cannot have been reused meanwhile.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

/// Describes an exit status the way operators read it: "exit code 3" or "signal 9 (SIGKILL)".
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGINT => " (SIGINT)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            _ => "",
        };
        format!("signal {signal}{name}")
    } else {
        "unknown status".to_string()
    }
}

/// Runs a `cmdStop` command line (already split, `${PID}` substituted) detached: its own
/// reaper thread waits for it so it never becomes a zombie.
pub fn run_stop_command(argv: &[String], env: &[(String, String)]) -> io::Result<()> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty cmdStop"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    prepare_child(&mut command, false);
    let mut child = command.spawn()?;
    thread::Builder::new()
        .name("cmdstop-reaper".to_string())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        })?;
    Ok(())
}
