//! swapd: a one-value channel for the sequential reader and writer hand-overs, which used
//! `std::sync::mpsc::channel()` once per request and direction. std's channel allocates a
//! cache-line-aligned counter and, on the first send, a zeroed block of 31 slots; this one
//! allocates one small `Arc`. On swapd's connection threads the value is always sent before
//! it is received, so `recv` never waits there, and a send wakes nobody (std's
//! `Condvar::notify_one` is a system call even without a waiter, so it is only called when a
//! receiver waits).

use std::sync::{Arc, Condvar, Mutex, PoisonError};

enum State<T> {
    Empty,
    Sent(T),
    /// The value was received, or the sender went away without sending.
    Closed,
}

struct Shared<T> {
    state: Mutex<Slot<T>>,
    changed: Condvar,
}

struct Slot<T> {
    state: State<T>,
    /// A receiver is blocked in `recv`.
    waiting: bool,
}

pub struct Sender<T>(Arc<Shared<T>>);
pub struct Receiver<T>(Arc<Shared<T>>);

/// The sender went away without sending (or the value was already received).
#[derive(Debug)]
pub struct RecvError;

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(Slot {
            state: State::Empty,
            waiting: false,
        }),
        changed: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Hands `value` over; a second send, or one after the receiver went away, gives it back.
    pub fn send(&self, value: T) -> Result<(), T> {
        if Arc::strong_count(&self.0) == 1 {
            return Err(value);
        }
        let mut slot = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(slot.state, State::Empty) {
            return Err(value);
        }
        slot.state = State::Sent(value);
        let waiting = slot.waiting;
        drop(slot);
        if waiting {
            self.0.changed.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut slot = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(slot.state, State::Empty) {
            slot.state = State::Closed;
            let waiting = slot.waiting;
            drop(slot);
            if waiting {
                self.0.changed.notify_one();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the value; an error once the sender is gone without sending.
    pub fn recv(&self) -> Result<T, RecvError> {
        let mut slot = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match std::mem::replace(&mut slot.state, State::Closed) {
                State::Sent(value) => return Ok(value),
                State::Closed => return Err(RecvError),
                State::Empty => {
                    slot.state = State::Empty;
                    slot.waiting = true;
                    slot = self
                        .0
                        .changed
                        .wait(slot)
                        .unwrap_or_else(PoisonError::into_inner);
                    slot.waiting = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_value_is_received_once() {
        let (tx, rx) = channel();
        tx.send(7).unwrap();
        assert_eq!(tx.send(8), Err(8));
        assert_eq!(rx.recv().unwrap(), 7);
        assert!(rx.recv().is_err());
    }

    #[test]
    fn a_dropped_sender_ends_the_wait() {
        let (tx, rx) = channel::<u8>();
        let waiter = std::thread::spawn(move || rx.recv().is_err());
        drop(tx);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn recv_waits_for_a_send_from_another_thread() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || tx.send(String::from("reader")).unwrap());
        assert_eq!(rx.recv().unwrap(), "reader");
        sender.join().unwrap();
    }

    #[test]
    fn send_after_the_receiver_is_gone_gives_the_value_back() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(1), Err(1));
    }
}
