//! `${PORT}` assignment (step 3), `${PID}` in `cmdStop`, and `cmd` splitting.

use super::*;

#[test]
fn ports_follow_sorted_ids_and_skip_models_without_port() {
    let loaded = load_ok(
        "\
macros:
  first: 6000
startPort: ${first}
models:
  zeta:
    cmd: srv --port ${PORT}
  alpha:
    cmd: srv --port ${PORT}
  fixed:
    cmd: srv --port 9999
    proxy: http://localhost:9999
  commented:
    cmd: |
      srv --port 1234
      # --port ${PORT}
    proxy: http://localhost:1234
  beta:
    cmd: srv --port ${PORT}
",
    );
    let port = |id: &str| loaded.config.models[id].port;
    assert_eq!(port("alpha"), Some(6000));
    assert_eq!(port("beta"), Some(6001));
    assert_eq!(
        port("commented"),
        None,
        "a commented-out ${{PORT}} takes no port"
    );
    assert_eq!(port("fixed"), None);
    assert_eq!(port("zeta"), Some(6002));
    assert_eq!(loaded.config.models["zeta"].proxy, "http://localhost:6002");
}

#[test]
fn pid_is_only_allowed_in_cmd_stop() {
    let loaded = load_ok(
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    cmdStop: |\n      # stop it\n      kill ${PID}\n",
    );
    assert_eq!(
        loaded.config.models["m"].cmd_stop.as_deref(),
        Some("kill ${PID}")
    );

    let error = load_err("models:\n  m:\n    cmd: srv ${PID} --port ${PORT}\n");
    assert_eq!(error.key, "models.m.cmd");
    assert!(error.message.contains("unknown macro '${PID}'"), "{error}");
}

#[test]
fn cmd_is_split_like_a_posix_shell() {
    let loaded = load_ok(
        "\
models:
  m:
    cmd: |
      # leading comment
      /usr/bin/server \\
        --port ${PORT} \\
        # commented-out flag
        --prompt \"say \\\"hi\\\" to ${MODEL_ID}\" \\
        --name 'it''s fine' --raw a\\ b
",
    );
    assert_eq!(
        loaded.config.models["m"].cmd,
        [
            "/usr/bin/server",
            "--port",
            "5800",
            "--prompt",
            "say \"hi\" to m",
            "--name",
            "its fine",
            "--raw",
            "a b"
        ]
    );
    assert_eq!(
        loaded.config.models["m"].cmd_display,
        "/usr/bin/server --port 5800 --prompt 'say \"hi\" to m' --name 'its fine' --raw 'a b'"
    );
}

#[test]
fn split_command_is_public_for_cmd_stop() {
    assert_eq!(
        split_command("kill \\\n  -TERM 42").expect("splits"),
        ["kill", "-TERM", "42"]
    );
}
