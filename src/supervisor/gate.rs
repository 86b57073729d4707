//! The fast path past the supervisor for a model that is ready.
//!
//! Every request used to ask the supervisor thread for a lease and wait for its answer: two
//! thread wake-ups per request, on a path where nothing needs deciding when the model is
//! already serving. A [`Gate`] lets a handler take a lease by itself, with one atomic operation,
//! while the supervisor holds the gate open; anything else (a model that is stopped, starting,
//! stopping, retiring, or at its `concurrencyLimit`) still goes through the supervisor.
//!
//! The gate's word holds the open bit and the number of leases out, granted either way, so
//! the supervisor's view of "in flight" is always exact. The supervisor closes the gate before
//! any transition out of `Ready`, and decides "idle, may be stopped" with [`Gate::close_if_idle`],
//! which closes only if no lease is out, in one step: no handler can slip a request in between
//! the check and the stop.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const OPEN: u64 = 1 << 63;
const COUNT: u64 = OPEN - 1;

#[derive(Debug)]
pub struct Gate {
    /// The open bit and the number of leases out.
    state: AtomicU64,
    /// The model's `concurrencyLimit`: the fast path admits only below it.
    limit: AtomicUsize,
}

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate {
            state: AtomicU64::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    /// Takes a lease if the gate is open and below the limit.
    pub fn try_enter(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed) as u64;
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & OPEN == 0 || current & COUNT >= limit {
                return false;
            }
            match self.state.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Counts a lease the supervisor granted (whether the gate is open or not).
    pub fn enter_granted(&self) {
        self.state.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives a lease back; returns the number still out.
    pub fn release(&self) -> u64 {
        (self.state.fetch_sub(1, Ordering::AcqRel) & COUNT) - 1
    }

    pub fn inflight(&self) -> usize {
        (self.state.load(Ordering::Acquire) & COUNT) as usize
    }

    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) & OPEN != 0
    }

    pub fn open(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        self.state.fetch_or(OPEN, Ordering::AcqRel);
    }

    pub fn close(&self) {
        self.state.fetch_and(COUNT, Ordering::AcqRel);
    }

    /// Closes the gate if no lease is out. `true`: closed and idle; `false`: busy, unchanged.
    pub fn close_if_idle(&self) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & COUNT != 0 {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(current, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closed_gate_admits_nothing_and_open_gate_admits_up_to_the_limit() {
        let gate = Gate::new(2);
        assert!(!gate.try_enter());
        gate.open(2);
        assert!(gate.try_enter());
        assert!(gate.try_enter());
        assert!(
            !gate.try_enter(),
            "the limit sends the third to the supervisor"
        );
        assert_eq!(gate.inflight(), 2);
        assert_eq!(gate.release(), 1);
        assert!(gate.try_enter());
        gate.close();
        assert!(!gate.try_enter());
        assert_eq!(gate.inflight(), 2, "closing keeps the count");
        gate.enter_granted();
        assert_eq!(gate.inflight(), 3);
    }

    #[test]
    fn close_if_idle_refuses_while_leases_are_out() {
        let gate = Gate::new(10);
        gate.open(10);
        assert!(gate.try_enter());
        assert!(!gate.close_if_idle());
        assert!(gate.is_open(), "a busy gate stays open");
        assert_eq!(gate.release(), 0);
        assert!(gate.close_if_idle());
        assert!(!gate.is_open());
        assert!(!gate.try_enter());
    }

    #[test]
    fn no_entry_succeeds_after_close_if_idle_succeeds() {
        // Handlers race the close: every entry either happened before the close (so the close
        // fails) or fails itself.
        for _ in 0..200 {
            let gate = Arc::new(Gate::new(1000));
            gate.open(1000);
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let gate = gate.clone();
                    std::thread::spawn(move || {
                        (0..100).for_each(|_| {
                            gate.try_enter();
                        })
                    })
                })
                .collect();
            loop {
                if gate.close_if_idle() {
                    break;
                } else {
                    // Let the racers' leases go, as finished requests do.
                    while gate.inflight() > 0 {
                        gate.release();
                    }
                }
            }
            for racer in racers {
                racer.join().unwrap();
            }
            assert!(!gate.is_open());
            assert_eq!(gate.inflight(), 0, "nothing entered after the idle close");
        }
    }
}
