//! The supervisor's small pure decisions, table-tested: when a start is abandoned, when a
//! model that just became ready is stopped after a withdrawn grant, the log tail in a start
//! failure's message.

use super::state::{abandon_start, abandon_unused_start, last_lines};
use super::Phase;

#[test]
fn a_start_is_abandoned_only_when_nobody_wants_it_any_more() {
    use Phase::*;
    // (phase, requests still waiting, held by an explicit load, shutting down) → abandon
    let table = [
        (Starting, 0, false, false, true),
        (Starting, 1, false, false, false),
        (Starting, 3, false, false, false),
        (Starting, 0, true, false, false),
        (Starting, 0, false, true, false),
        (Ready, 0, false, false, false),
        (Stopping, 0, false, false, false),
        (Stopped, 0, false, false, false),
    ];
    for (phase, waiting, held, shutting_down, expected) in table {
        assert_eq!(
            abandon_start(phase, waiting, held, shutting_down),
            expected,
            "{phase:?}, {waiting} waiting, held {held}, shutting down {shutting_down}"
        );
    }
}

#[test]
fn a_ready_start_is_stopped_after_a_withdrawn_grant_only_if_unused() {
    use Phase::*;
    // (phase, served since ready, still waiting, held, shutting down) → stop
    let table = [
        (Ready, false, 0, false, false, true),
        (Ready, true, 0, false, false, false),
        (Ready, false, 1, false, false, false),
        (Ready, false, 0, true, false, false),
        (Ready, false, 0, false, true, false),
        (Starting, false, 0, false, false, false),
        (Stopping, false, 0, false, false, false),
        (Stopped, false, 0, false, false, false),
    ];
    for (phase, served, waiting, held, shutting_down, expected) in table {
        assert_eq!(
            abandon_unused_start(phase, served, waiting, held, shutting_down),
            expected,
            "{phase:?}, served {served}, {waiting} waiting, held {held}, shutting down {shutting_down}"
        );
    }
}

#[test]
fn last_lines_takes_the_tail() {
    assert_eq!(last_lines(b"a\nb\nc\n", 2), "b\nc");
    assert_eq!(last_lines(b"only", 5), "only");
    assert_eq!(last_lines(b"", 5), "");
}
