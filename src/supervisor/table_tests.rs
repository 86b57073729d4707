//! The supervisor's transition table, row by row (the harness is `table_harness.rs`): start,
//! health pass and fail, exits expected and not, swaps within and across groups, TTLs and
//! idle overrides, unloads, reloads, abandoned starts, shutdown, stale reports and
//! `concurrencyLimit`. Each step lists the lines it must produce: `spawn model#generation`,
//! `probe ...`, `TERM`/`KILL` to a process group, `cmdStop ...`, `probe ... cancelled`, the
//! replies (`r1 queued`, `r1 granted`, `r1 failed Kind`), `wake +N ms` and what completed.
//! Default `unloadTimeout` is 10 s; pids are 1000 + generation.

use super::table_harness::{check, Row, Step::*};
use super::IdleOverride;

const AB: &str = "models:
  a:
    cmd: serve a
    proxy: http://127.0.0.1:9001
  b:
    cmd: serve b
    proxy: http://127.0.0.1:9002
";

/// `a` and `b` may run together.
const PAIR: &str = "models:
  a:
    cmd: serve a
    proxy: http://127.0.0.1:9001
  b:
    cmd: serve b
    proxy: http://127.0.0.1:9002
groups:
  pair:
    swap: false
    members: [a, b]
";

const START: &[Row] = &[
    (
        "a request starts a stopped model, its health check grants it, then the gate serves",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Phases, &["phases a:starting b:stopped"]),
            (Fast("r2", "a"), &["r2 no fast lease"]),
            (Healthy("a"), &["r1 granted"]),
            (Phases, &["phases a:ready[1] b:stopped"]),
            (Fast("r2", "a"), &["r2 fast lease"]),
            (Phases, &["phases a:ready[2] b:stopped"]),
            (Done("r1"), &[]),
            (Done("r2"), &[]),
            (Phases, &["phases a:ready b:stopped"]),
            (Wake, &["no deadline"]),
        ],
    ),
    (
        "with checkEndpoint none a model is ready as soon as it is spawned",
        "models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n    checkEndpoint: none\n",
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "r1 queued", "r1 granted"]),
            (Phases, &["phases a:ready[1]"]),
        ],
    ),
    (
        "a command that cannot be spawned fails the request and leaves the model stopped",
        "models:\n  a:\n    cmd: missing program\n    proxy: http://127.0.0.1:9001\n",
        &[
            (Ask("r1", "a"), &["spawn a failed", "r1 queued", "r1 failed StartFailed"]),
            (Phases, &["phases a:stopped"]),
        ],
    ),
    (
        "an unknown model is refused",
        AB,
        &[(Ask("r1", "zzz"), &["r1 failed UnknownModel"])],
    ),
    (
        "a failed health check fails the waiters and stops the process; the next request retries",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Ask("r2", "a"), &["r2 queued"]),
            (
                Unhealthy("a"),
                &["TERM a#1", "probe a#1 cancelled", "r1 failed StartFailed", "r2 failed StartFailed"],
            ),
            (Phases, &["phases a:stopping b:stopped"]),
            (Exit("a", 0), &["KILL a#1"]),
            (Phases, &["phases a:stopped b:stopped"]),
            (Ask("r3", "a"), &["spawn a#2: serve a", "probe a#2", "r3 queued"]),
        ],
    ),
    (
        "an exit during the start fails the waiters at once",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Exit("a", 7), &["KILL a#1", "probe a#1 cancelled", "r1 failed StartFailed"]),
            (Phases, &["phases a:stopped b:stopped"]),
            (Wake, &["no deadline"]),
        ],
    ),
    (
        "a ready model that crashes is stopped, its lease still counted, and restarts on demand",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (Exit("a", 1), &["KILL a#1"]),
            (Phases, &["phases a:stopped[1] b:stopped"]),
            (Fast("r2", "a"), &["r2 no fast lease"]),
            (Done("r1"), &[]),
            (Ask("r3", "a"), &["spawn a#2: serve a", "probe a#2", "r3 queued"]),
        ],
    ),
];

const SWAP: &[Row] = &[
    (
        "a swap waits for the request in flight, then stops the old model and starts the new",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Ask("r2", "b"), &["r2 queued"]),
            (Phases, &["phases a:ready[1] b:stopped"]),
            (Done("r1"), &["TERM a#1"]),
            (Phases, &["phases a:stopping b:stopped"]),
            (
                Exit("a", 0),
                &["KILL a#1", "spawn b#2: serve b", "probe b#2"],
            ),
            (Healthy("b"), &["r2 granted"]),
            (Phases, &["phases a:stopped b:ready[1]"]),
        ],
    ),
    (
        "requests are collated: a request for the running model is served before the swap",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Ask("r2", "b"), &["r2 queued"]),
            (Ask("r3", "a"), &["r3 granted"]),
            (Done("r1"), &[]),
            (Done("r3"), &["TERM a#1"]),
            (
                Exit("a", 0),
                &["KILL a#1", "spawn b#2: serve b", "probe b#2"],
            ),
        ],
    ),
    (
        "a queued request whose client leaves does not trigger its swap",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Ask("r2", "b"), &["r2 queued"]),
            (Leave("r2"), &[]),
            (Done("r1"), &[]),
            (Phases, &["phases a:ready b:stopped"]),
        ],
    ),
    (
        "members of a non-swapping group run together",
        PAIR,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (
                Ask("r2", "b"),
                &["spawn b#2: serve b", "probe b#2", "r2 queued"],
            ),
            (Phases, &["phases a:ready b:starting"]),
        ],
    ),
    (
        "an exclusive group evicts a non-exclusive one but not a persistent one, and swaps within",
        "models:
  a:
    cmd: serve a
    proxy: http://127.0.0.1:9001
  b:
    cmd: serve b
    proxy: http://127.0.0.1:9002
  e:
    cmd: serve e
    proxy: http://127.0.0.1:9003
  x:
    cmd: serve x
    proxy: http://127.0.0.1:9004
groups:
  main:
    members: [a, b]
  keep:
    persistent: true
    exclusive: false
    swap: false
    members: [e]
  shared:
    exclusive: false
    members: [x]
",
        &[
            (
                Ask("r1", "e"),
                &["spawn e#1: serve e", "probe e#1", "r1 queued"],
            ),
            (Healthy("e"), &["r1 granted"]),
            (Done("r1"), &[]),
            (
                Ask("r2", "x"),
                &["spawn x#2: serve x", "probe x#2", "r2 queued"],
            ),
            (Healthy("x"), &["r2 granted"]),
            (Done("r2"), &[]),
            (Ask("r3", "a"), &["TERM x#2", "r3 queued"]),
            (
                Exit("x", 0),
                &["KILL x#2", "spawn a#3: serve a", "probe a#3"],
            ),
            (Healthy("a"), &["r3 granted"]),
            (Done("r3"), &[]),
            (Ask("r4", "b"), &["TERM a#3", "r4 queued"]),
            (
                Exit("a", 0),
                &["KILL a#3", "spawn b#4: serve b", "probe b#4"],
            ),
            (Phases, &["phases a:stopped b:starting e:ready x:stopped"]),
        ],
    ),
];

const TTL: &str = "models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n    ttl: 5\n";

const TIMERS: &[Row] = &[
    (
        "an idle model is stopped after its ttl, and killed after unloadTimeout",
        TTL,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Wake, &["no deadline"]),
            (Done("r1"), &[]),
            (Wait(4999), &[]),
            (Phases, &["phases a:ready"]),
            (Wake, &["wake +1ms", "TERM a#1"]),
            (Phases, &["phases a:stopping"]),
            (Wake, &["wake +10000ms", "KILL a#1"]),
            (Exit("a", 0), &["KILL a#1"]),
            (Phases, &["phases a:stopped"]),
            (Wake, &["no deadline"]),
        ],
    ),
    (
        "using a model again restarts its ttl from the last release",
        TTL,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (Wait(3000), &[]),
            (Fast("r2", "a"), &["r2 fast lease"]),
            (Wait(4000), &[]),
            (Done("r2"), &[]),
            (Wake, &["wake +5000ms", "TERM a#1"]),
        ],
    ),
    (
        "a zero idle override stops the model as soon as it is idle",
        TTL,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (
                SetIdle("a", Some(IdleOverride::After(std::time::Duration::ZERO))),
                &[],
            ),
            (Done("r1"), &["TERM a#1"]),
        ],
    ),
    (
        "a never override keeps the model until cleared; the ttl then applies again",
        TTL,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (SetIdle("a", Some(IdleOverride::Never)), &[]),
            (Done("r1"), &[]),
            (Wake, &["no deadline"]),
            (SetIdle("a", None), &[]),
            (Wake, &["wake +5000ms", "TERM a#1"]),
        ],
    ),
    (
        "a process that ignores SIGTERM is killed after its own unloadTimeout",
        "models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n    unloadTimeout: 2\n",
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (Unload(Some("a")), &["TERM a#1"]),
            (Wait(1999), &[]),
            (Wake, &["wake +1ms", "KILL a#1"]),
            (Phases, &["phases a:stopping"]),
            (Exit("a", 0), &["KILL a#1", "unload a done"]),
        ],
    ),
];

const UNLOAD: &[Row] = &[
    (
        "unloading a ready model stops it; the unload is done once it exited",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (Unload(Some("a")), &["TERM a#1"]),
            (Phases, &["phases a:stopping b:stopped"]),
            (Exit("a", 0), &["KILL a#1", "unload a done"]),
        ],
    ),
    (
        "unloading a starting model fails its waiters",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (
                Unload(Some("a")),
                &["TERM a#1", "probe a#1 cancelled", "r1 failed Unloaded"],
            ),
            (Exit("a", 0), &["KILL a#1", "unload a done"]),
        ],
    ),
    (
        "unloading a stopped model is done at once",
        AB,
        &[(Unload(Some("a")), &["unload a done"])],
    ),
    (
        "unloading all stops every running model and is done when the last one exited",
        PAIR,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (
                Ask("r2", "b"),
                &["spawn b#2: serve b", "probe b#2", "r2 queued"],
            ),
            (Healthy("b"), &["r2 granted"]),
            (Done("r2"), &[]),
            (Unload(None), &["TERM a#1", "TERM b#2"]),
            (Exit("a", 0), &["KILL a#1"]),
            (Exit("b", 0), &["KILL b#2", "unload all done"]),
        ],
    ),
    (
        "cmdStop replaces SIGTERM, with the pid; a failing cmdStop falls back to SIGTERM",
        "models:
  a:
    cmd: serve a
    proxy: http://127.0.0.1:9001
    cmdStop: stop-it ${PID}
  b:
    cmd: serve b
    proxy: http://127.0.0.1:9002
    cmdStop: failing-stop ${PID}
",
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (Unload(Some("a")), &["cmdStop stop-it 1001"]),
            (Exit("a", 0), &["KILL a#1", "unload a done"]),
            (
                Ask("r2", "b"),
                &["spawn b#2: serve b", "probe b#2", "r2 queued"],
            ),
            (Healthy("b"), &["r2 granted"]),
            (Done("r2"), &[]),
            (
                Unload(Some("b")),
                &["cmdStop failing-stop 1002", "TERM b#2"],
            ),
        ],
    ),
];

const RELOAD: &[Row] = &[
    (
        "a reload that changes only per-request settings keeps the process serving",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (
                Reload("models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n    ttl: 60\n  b:\n    cmd: serve b\n    proxy: http://127.0.0.1:9002\n"),
                &["reload updated a"],
            ),
            (Phases, &["phases a:ready b:stopped"]),
            (Fast("r2", "a"), &["r2 fast lease"]),
        ],
    ),
    (
        "a reload that changes how a model starts drains it, then restarts it with the new command",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (
                Reload("models:\n  a:\n    cmd: serve a2\n    proxy: http://127.0.0.1:9001\n  b:\n    cmd: serve b\n    proxy: http://127.0.0.1:9002\n"),
                &["reload changed a"],
            ),
            (Fast("r2", "a"), &["r2 no fast lease"]),
            (Ask("r3", "a"), &["r3 queued"]),
            (Done("r1"), &["TERM a#1"]),
            (Exit("a", 0), &["KILL a#1", "spawn a#2: serve a2", "probe a#2"]),
            (Healthy("a"), &["r3 granted"]),
        ],
    ),
    (
        "a reload that changes a stopped model takes effect at its next start",
        AB,
        &[
            (
                Reload("models:\n  a:\n    cmd: serve a2\n    proxy: http://127.0.0.1:9001\n  b:\n    cmd: serve b\n    proxy: http://127.0.0.1:9002\n"),
                &["reload changed a"],
            ),
            (Ask("r1", "a"), &["spawn a#1: serve a2", "probe a#1", "r1 queued"]),
        ],
    ),
    (
        "a reload that removes a model refuses new requests, drains it, stops it and forgets it",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (
                Reload("models:\n  b:\n    cmd: serve b\n    proxy: http://127.0.0.1:9002\n"),
                &["reload removed a"],
            ),
            (Ask("r2", "a"), &["r2 failed UnknownModel"]),
            (Phases, &["phases a:ready[1] b:stopped"]),
            (Done("r1"), &["TERM a#1"]),
            (Exit("a", 0), &["KILL a#1"]),
            (Phases, &["phases b:stopped"]),
        ],
    ),
    (
        "a reload fails the requests queued for a model it removes",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (Ask("r2", "b"), &["r2 queued"]),
            (
                Reload("models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n"),
                &["reload removed b", "r2 failed UnknownModel"],
            ),
            (Phases, &["phases a:ready[1]"]),
        ],
    ),
    (
        "a reload that adds a model makes it available",
        AB,
        &[
            (
                Reload("models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n  b:\n    cmd: serve b\n    proxy: http://127.0.0.1:9002\n  c:\n    cmd: serve c\n    proxy: http://127.0.0.1:9003\n"),
                &["reload added c"],
            ),
            (Ask("r1", "c"), &["spawn c#1: serve c", "probe c#1", "r1 queued"]),
        ],
    ),
];

const ABANDON: &[Row] = &[
    (
        "a start is abandoned when the last request waiting for it leaves",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Ask("r2", "a"), &["r2 queued"]),
            (Leave("r1"), &[]),
            (Phases, &["phases a:starting b:stopped"]),
            (Leave("r2"), &["TERM a#1", "probe a#1 cancelled"]),
            (Phases, &["phases a:stopping b:stopped"]),
        ],
    ),
    (
        "a start that an explicit load caused or joined is kept when every client leaves",
        AB,
        &[
            (
                Load("l1", "a"),
                &["spawn a#1: serve a", "probe a#1", "l1 queued"],
            ),
            (Ask("r2", "a"), &["r2 queued"]),
            (Leave("r2"), &[]),
            (Leave("l1"), &[]),
            (Phases, &["phases a:starting b:stopped"]),
            (Healthy("a"), &[]),
            (Phases, &["phases a:ready b:stopped"]),
        ],
    ),
    (
        "a grant given back unused as the model became ready stops it",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Withdraw("r1"), &["TERM a#1"]),
            (Phases, &["phases a:stopping b:stopped"]),
        ],
    ),
    (
        "a lease given back unused after the model served keeps it",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (Fast("r2", "a"), &["r2 fast lease"]),
            (Withdraw("r2"), &[]),
            (Phases, &["phases a:ready b:stopped"]),
        ],
    ),
];

const SHUTDOWN: &[Row] = &[
    (
        "shutdown fails waiting requests, refuses new ones, stops everything, ends the loop",
        PAIR,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (
                Ask("r2", "b"),
                &["spawn b#2: serve b", "probe b#2", "r2 queued"],
            ),
            (
                Shutdown,
                &[
                    "TERM a#1",
                    "TERM b#2",
                    "probe b#2 cancelled",
                    "r2 failed ShuttingDown",
                ],
            ),
            (Ask("r3", "a"), &["r3 failed ShuttingDown"]),
            (Fast("r4", "a"), &["r4 no fast lease"]),
            (Exit("a", 0), &["KILL a#1"]),
            (Exit("b", 0), &["KILL b#2", "shutdown done", "loop ends"]),
        ],
    ),
    (
        "shutdown kills what ignores SIGTERM after unloadTimeout",
        AB,
        &[
            (
                Ask("r1", "a"),
                &["spawn a#1: serve a", "probe a#1", "r1 queued"],
            ),
            (Healthy("a"), &["r1 granted"]),
            (Shutdown, &["TERM a#1"]),
            (Wake, &["wake +10000ms", "KILL a#1"]),
            (Exit("a", 0), &["KILL a#1", "shutdown done", "loop ends"]),
        ],
    ),
];

const STALE_AND_LIMITS: &[Row] = &[
    (
        "health and exit reports from a replaced generation change nothing",
        AB,
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (Done("r1"), &[]),
            (Unload(Some("a")), &["TERM a#1"]),
            (Exit("a", 0), &["KILL a#1", "unload a done"]),
            (Ask("r2", "a"), &["spawn a#2: serve a", "probe a#2", "r2 queued"]),
            (HealthyGen("a", 1), &[]),
            (ExitGen("a", 1), &[]),
            (Phases, &["phases a:starting b:stopped"]),
            (Healthy("a"), &["r2 granted"]),
            (ExitGen("a", 1), &[]),
            (Phases, &["phases a:ready[1] b:stopped"]),
            // The control: the current generation's exit does take effect.
            (ExitGen("a", 2), &["KILL a#2"]),
            (Phases, &["phases a:stopped[1] b:stopped"]),
        ],
    ),
    (
        "concurrencyLimit counts queued, waiting and served requests, on both paths",
        "models:\n  a:\n    cmd: serve a\n    proxy: http://127.0.0.1:9001\n    concurrencyLimit: 2\n",
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Ask("r2", "a"), &["r2 queued"]),
            (Ask("r3", "a"), &["r3 failed TooManyRequests"]),
            (Healthy("a"), &["r1 granted", "r2 granted"]),
            (Fast("r4", "a"), &["r4 no fast lease"]),
            (Ask("r5", "a"), &["r5 failed TooManyRequests"]),
            (Done("r1"), &[]),
            (Fast("r6", "a"), &["r6 fast lease"]),
            (Phases, &["phases a:ready[2]"]),
        ],
    ),
    (
        "requests queued behind a swap count toward the concurrencyLimit",
        "models:
  a:
    cmd: serve a
    proxy: http://127.0.0.1:9001
  b:
    cmd: serve b
    proxy: http://127.0.0.1:9002
    concurrencyLimit: 1
",
        &[
            (Ask("r1", "a"), &["spawn a#1: serve a", "probe a#1", "r1 queued"]),
            (Healthy("a"), &["r1 granted"]),
            (Ask("r2", "b"), &["r2 queued"]),
            (Ask("r3", "b"), &["r3 failed TooManyRequests"]),
            (Done("r1"), &["TERM a#1"]),
        ],
    ),
];

#[test]
fn start_health_and_exit() {
    check(START);
}

#[test]
fn swaps_and_groups() {
    check(SWAP);
}

#[test]
fn ttl_idle_overrides_and_kill_deadlines() {
    check(TIMERS);
}

#[test]
fn unload_one_and_all() {
    check(UNLOAD);
}

#[test]
fn reload_changed_unchanged_added_removed() {
    check(RELOAD);
}

#[test]
fn abandoned_starts_and_withdrawn_grants() {
    check(ABANDON);
}

#[test]
fn shutdown() {
    check(SHUTDOWN);
}

#[test]
fn stale_reports_and_concurrency_limit() {
    check(STALE_AND_LIMITS);
}
