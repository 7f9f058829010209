//! The epoch close rule (`epoch.rs`), pure: intake while the window is open, under
//! max-epoch-records and not stopping; close when settled once intake is over; wait for
//! requests in flight until park-after past the window; close an idle epoch early only when
//! the previous one was small.

use std::time::Duration;

use tokio::time::Instant;

use super::super::epoch::{close_when_idle, EpochRule, Now, Step};

const WINDOW: Duration = Duration::from_millis(100);
const PARK_AFTER: Duration = Duration::from_millis(400);
const MAX_RECORDS: usize = 10;
const EARLY_CLOSE_BELOW: usize = 50;

fn rule(at: Instant, previous_epoch_records: usize) -> EpochRule {
    EpochRule::begin(
        at,
        WINDOW,
        PARK_AFTER,
        MAX_RECORDS,
        previous_epoch_records,
        EARLY_CLOSE_BELOW,
    )
}

/// A quiet moment: nothing taken, nothing in flight, not stopping.
fn quiet(at: Instant) -> Now {
    Now {
        at,
        records: 0,
        stopping: false,
        settled: true,
        backpressured: false,
    }
}

#[test]
fn the_window_and_park_deadline_follow_the_settings() {
    let t0 = Instant::now();
    let r = rule(t0, 0);
    assert_eq!(r.window, t0 + WINDOW);
    assert_eq!(r.park_at, t0 + WINDOW + PARK_AFTER);
    assert_eq!(r.max_records, MAX_RECORDS);
}

#[test]
fn intake_stops_at_the_window_at_max_records_and_at_a_stop() {
    let t0 = Instant::now();
    let r = rule(t0, 0);
    assert!(r.intake(&quiet(t0)));
    assert!(r.intake(&Now {
        records: MAX_RECORDS - 1,
        ..quiet(t0)
    }));
    assert!(!r.intake(&Now {
        records: MAX_RECORDS,
        ..quiet(t0)
    }));
    assert!(!r.intake(&Now {
        stopping: true,
        ..quiet(t0)
    }));
    assert!(r.intake(&quiet(t0 + WINDOW - Duration::from_millis(1))));
    assert!(!r.intake(&quiet(t0 + WINDOW)));
    assert!(
        r.intake(&Now {
            backpressured: true,
            ..quiet(t0)
        }),
        "back-pressure pauses reading, it does not end the intake"
    );
}

#[test]
fn an_epoch_closes_when_settled_and_its_intake_is_over() {
    let t0 = Instant::now();
    let r = rule(t0, 1_000);
    assert_eq!(r.step(&quiet(t0 + WINDOW)), Step::Close);
    assert_eq!(
        r.step(&Now {
            records: MAX_RECORDS,
            ..quiet(t0)
        }),
        Step::Close,
        "max records reached early"
    );
    assert_eq!(
        r.step(&Now {
            stopping: true,
            ..quiet(t0)
        }),
        Step::Close
    );
}

#[test]
fn requests_in_flight_are_waited_for_until_park_at_then_the_epoch_closes() {
    let t0 = Instant::now();
    let r = rule(t0, 1_000);
    let busy = |at| Now {
        settled: false,
        ..quiet(at)
    };
    assert_eq!(
        r.step(&busy(t0 + WINDOW)),
        Step::Wait {
            take: false,
            deadline: r.park_at
        },
        "intake over, a request in flight: wait (no input) until park-after"
    );
    assert_eq!(
        r.step(&busy(t0 + WINDOW + PARK_AFTER - Duration::from_millis(1))),
        Step::Wait {
            take: false,
            deadline: r.park_at
        }
    );
    assert_eq!(
        r.step(&busy(r.park_at)),
        Step::Close,
        "its address is parked"
    );
    assert_eq!(
        r.step(&Now {
            stopping: true,
            ..busy(t0)
        }),
        Step::Close,
        "a stop does not wait for slow requests"
    );
}

#[test]
fn with_the_window_open_requests_in_flight_are_waited_for_while_taking_input() {
    let t0 = Instant::now();
    let r = rule(t0, 0);
    let busy = Now {
        settled: false,
        ..quiet(t0)
    };
    assert_eq!(
        r.step(&busy),
        Step::Wait {
            take: true,
            deadline: r.window
        }
    );
    assert_eq!(
        r.step(&Now {
            backpressured: true,
            ..busy
        }),
        Step::Wait {
            take: false,
            deadline: r.window
        },
        "back-pressure: no input, only responses"
    );
}

#[test]
fn a_settled_open_epoch_takes_ready_input_and_closes_when_idle_only_after_a_small_epoch() {
    let t0 = Instant::now();
    let small = rule(t0, EARLY_CLOSE_BELOW - 1);
    assert_eq!(
        small.step(&quiet(t0)),
        Step::TakeReady {
            close_if_idle: true,
            take: true,
            deadline: small.window
        }
    );
    let busy = rule(t0, EARLY_CLOSE_BELOW);
    assert_eq!(
        busy.step(&quiet(t0)),
        Step::TakeReady {
            close_if_idle: false,
            take: true,
            deadline: busy.window
        },
        "after a busy epoch, the whole window takes input"
    );
    assert_eq!(
        busy.step(&Now {
            backpressured: true,
            ..quiet(t0)
        }),
        Step::TakeReady {
            close_if_idle: false,
            take: false,
            deadline: busy.window
        }
    );
    assert!(close_when_idle(0, 1));
    assert!(!close_when_idle(1, 1));
    assert!(!close_when_idle(0, 0), "early close off");
}

/// One epoch walked through on tokio's paused clock, the way the task drives the rule: a
/// record arrives, its request runs past the window and past park-after, and the epoch
/// commits with the address parked.
#[tokio::test(start_paused = true)]
async fn an_epoch_on_the_paused_clock_takes_input_waits_and_parks() {
    let r = rule(Instant::now(), 1_000);
    let mut now = Now {
        at: Instant::now(),
        records: 0,
        stopping: false,
        settled: true,
        backpressured: false,
    };
    // t = 0: nothing in flight, a busy previous epoch: take input for the whole window.
    assert!(matches!(
        r.step(&now),
        Step::TakeReady {
            close_if_idle: false,
            take: true,
            ..
        }
    ));
    // t = 30 ms: a record arrives; its request is in flight.
    tokio::time::advance(Duration::from_millis(30)).await;
    now.at = Instant::now();
    now.records = 1;
    now.settled = false;
    assert_eq!(
        r.step(&now),
        Step::Wait {
            take: true,
            deadline: r.window
        }
    );
    // t = 100 ms: the window closed with the request still out.
    tokio::time::advance(Duration::from_millis(70)).await;
    now.at = Instant::now();
    assert!(!r.intake(&now));
    assert_eq!(
        r.step(&now),
        Step::Wait {
            take: false,
            deadline: r.park_at
        }
    );
    // Sleeping until the deadline the rule gave lands exactly on park-after.
    let Step::Wait { deadline, .. } = r.step(&now) else {
        unreachable!()
    };
    tokio::time::sleep_until(deadline).await;
    now.at = Instant::now();
    assert_eq!(now.at, r.park_at);
    assert_eq!(r.step(&now), Step::Close, "commit; the address is parked");
}

#[tokio::test(start_paused = true)]
async fn an_epoch_on_the_paused_clock_closes_as_soon_as_its_last_response_arrives() {
    let r = rule(Instant::now(), 0);
    let mut now = Now {
        settled: false,
        records: 3,
        ..quiet(Instant::now())
    };
    tokio::time::advance(WINDOW + Duration::from_millis(50)).await;
    now.at = Instant::now();
    assert!(matches!(r.step(&now), Step::Wait { take: false, .. }));
    // The response arrives before park-after.
    tokio::time::advance(Duration::from_millis(10)).await;
    now.at = Instant::now();
    now.settled = true;
    assert_eq!(r.step(&now), Step::Close);
    assert!(now.at < r.park_at);
}
