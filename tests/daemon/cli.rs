//! The command line: `--check-config`, warnings, errors and the llama-swap flag forms.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn run(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let output = Command::new(SWAPD).args(args).output().expect("run swapd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    let (code, stdout, stderr, _) = run(&["--check-config", example]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stdout.contains("port:"),
        "the summary lists ports: {stdout}"
    );
    assert!(
        !stderr.contains("warning"),
        "the example has no warnings: {stderr}"
    );
}

#[test]
fn a_typo_warns_with_a_suggestion() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("typo.yaml");
    std::fs::write(
        &path,
        "models:\n  a:\n    cmd: x --port ${PORT}\n    ttll: 5\n",
    )
    .expect("write");
    let (code, _, stderr, _) = run(&["-check-config", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0));
    assert!(stderr.contains("typo.yaml:4"), "{stderr}");
    assert!(stderr.contains("models.a.ttll"), "{stderr}");
    assert!(stderr.contains("did you mean 'ttl'"), "{stderr}");
}

#[test]
fn an_invalid_config_fails_fast_naming_file_line_and_key() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "models:\n  a:\n    cmd: x --port ${PORT}\n    ttl: abc\n",
    )
    .expect("write");
    for flag in ["--config", "-config", "--check-config"] {
        // "Fast" means swapd exits with the error instead of starting to serve: `run` waits
        // for the exit, so a daemon that kept running would hang here. How fast is not timed.
        let (code, _, stderr, _) = run(&[flag, path.to_str().expect("utf-8")]);
        assert_ne!(code, Some(0), "{flag}");
        assert!(!stderr.contains("listening on"), "{flag}: {stderr}");
        assert!(stderr.contains("bad.yaml:4:"), "{flag}: {stderr}");
        assert!(stderr.contains("models.a.ttl"), "{flag}: {stderr}");
    }
}

#[test]
fn version_help_and_bad_flags() {
    let (code, stdout, _, _) = run(&["-version"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
    let (code, stdout, _, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--watch-config"));
    let (code, _, stderr, _) = run(&["--bogus"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("bogus"));
}

#[test]
fn llama_swap_single_dash_flags_start_the_daemon() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!("models:\n  a:\n    cmd: {FAKE} --port ${{PORT}}\n"),
    )
    .expect("write");
    let mut child = Command::new(SWAPD)
        .args([
            "-config",
            path.to_str().expect("utf-8"),
            "-listen",
            "127.0.0.1:0",
            "-watch-config",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|line| line.contains("listening on"));
    kill(pid, libc::SIGTERM);
    let status = child.wait().expect("wait");
    assert!(line.is_some_and(|l| l.contains("127.0.0.1:")));
    assert_eq!(status.code(), Some(0));
}
