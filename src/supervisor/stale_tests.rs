//! Reports from a process that has been replaced are ignored: the supervisor tags each start
//! with a generation, and a health or exit report carrying an older one must change nothing.
//! These reports are sent by hand (from inside the crate, on the supervisor's own channel),
//! because the race that produces them in real life cannot be provoked on demand.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Command, Phase, Supervisor};
use crate::config::LogToStdout;
use crate::logs::Logs;
use crate::metrics::Metrics;

/// `ready` is a model whose process counts as ready once spawned; `starting` one whose health
/// check never passes (nothing listens on its port), so it stays in its start for the test.
fn supervisor() -> Supervisor {
    let text = "healthCheckTimeout: 600\nmodels:\n  ready:\n    cmd: sleep 600\n    proxy: http://127.0.0.1:9\n    checkEndpoint: none\n  starting:\n    cmd: sleep 600\n    proxy: http://127.0.0.1:9\ngroups:\n  both:\n    swap: false\n    members: [ready, starting]\n";
    let loaded = crate::config::parse(text, Path::new("stale.yaml"), &|_| None)
        .expect("the test config is valid");
    let (supervisor, _thread) = Supervisor::start(
        Arc::new(loaded.config),
        Arc::new(Logs::new(LogToStdout::None, 64 * 1024)),
        Arc::new(Metrics::new(100)),
    );
    supervisor
}

fn status(supervisor: &Supervisor, model: &str) -> (Phase, Option<u32>) {
    let status = supervisor
        .snapshot()
        .into_iter()
        .find(|s| s.model == model)
        .expect("configured");
    (status.phase, status.pid)
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn send(supervisor: &Supervisor, command: Command) {
    supervisor.tx.send(command).expect("the supervisor runs");
}

fn exited(model: &str, generation: u64) -> Command {
    Command::Exited {
        model: model.to_string(),
        generation,
        status: ExitStatus::from_raw(9),
    }
}

#[test]
fn reports_from_a_replaced_process_are_ignored() {
    let supervisor = supervisor();
    // Generation 1: started, then unloaded (its exit is reported and handled).
    drop(supervisor.acquire_blocking("ready").expect("ready starts"));
    let (_, first) = status(&supervisor, "ready");
    let first = first.expect("a pid");
    supervisor.unload(Some("ready"));
    assert_eq!(status(&supervisor, "ready"), (Phase::Stopped, None));
    // Generation 2 replaces it.
    drop(
        supervisor
            .acquire_blocking("ready")
            .expect("ready starts again"),
    );
    let (phase, second) = status(&supervisor, "ready");
    let second = second.expect("a pid");
    assert_eq!(phase, Phase::Ready);
    assert_ne!(first, second);
    // Late reports from generation 1 change nothing.
    send(&supervisor, exited("ready", 1));
    send(
        &supervisor,
        Command::HealthFailed {
            model: "ready".to_string(),
            generation: 1,
            reason: "stale".to_string(),
        },
    );
    assert_eq!(status(&supervisor, "ready"), (Phase::Ready, Some(second)));
    assert!(alive(second), "a stale exit report killed the new process");

    // A model in its start: a stale "healthy" must not make it ready.
    let mut ticket = supervisor.request("starting");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&supervisor, "starting").0 != Phase::Starting {
        assert!(Instant::now() < deadline, "starting never started");
        let _ = ticket.wait(Duration::from_millis(10));
    }
    send(
        &supervisor,
        Command::HealthPassed {
            model: "starting".to_string(),
            generation: 1,
        },
    );
    assert_eq!(status(&supervisor, "starting").0, Phase::Starting);

    // The control: the same exit report with the current generation does take effect, so the
    // checks above could fail.
    send(&supervisor, exited("ready", 2));
    assert_eq!(status(&supervisor, "ready").0, Phase::Stopped);
    drop(ticket);
    assert!(supervisor.shutdown(Duration::from_secs(30)));
}
