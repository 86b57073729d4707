//! Admission and the queue: a request is refused, granted at once (a ready model, possibly
//! while a swap waits for it to drain), or queued; [`State::pump`] then serves, joins or starts
//! what the queue allows in arrival order (collating A B A B into A A B B), and a swap stops
//! the models it evicts once every one of them is idle. A withdrawn request (its client left)
//! may abandon the start it was waiting for.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::state::{abandon_start, abandon_unused_start, Pending, State, StopReason, Waiter};
use super::LOG_TARGET;
use super::{plan, AcquireError, Lease, Phase, Reply};

impl State {
    /// A request was withdrawn (its client left). If it was the last one waiting for a start
    /// that no explicit load holds, the start is abandoned: nobody wants the model any more,
    /// and a model left loaded would hold its memory until its TTL, or forever.
    pub(super) fn on_cancel(&mut self, id: u64) {
        self.queue.retain(|p| p.id != id);
        let mut left: Option<String> = None;
        for (model, slot) in self.slots.iter_mut() {
            let before = slot.waiters.len();
            slot.waiters.retain(|w| w.id != id);
            if slot.waiters.len() != before {
                left = Some(model.clone());
            }
        }
        let Some(model) = left else {
            return;
        };
        let slot = &self.slots[&model];
        let queued = self.queue.iter().filter(|p| p.model == model).count();
        if abandon_start(
            slot.phase,
            slot.waiters.len() + queued,
            slot.start_held,
            self.shutting_down,
        ) {
            log::info!(target: LOG_TARGET, "{model}: every request waiting for its start left; abandoning the start");
            let grace = slot.config.unload_timeout;
            self.begin_stop(&model, StopReason::Abandoned, grace);
        }
    }

    /// The last lease out was given back unused: its client left while waiting for the start,
    /// too late for [`State::on_cancel`] (the model became ready first). If the start was for
    /// nobody else, it is abandoned now, so it does not stay ready.
    pub(super) fn on_withdrawn(&mut self, model: &str) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        slot.last_used = self.effects.now();
        let queued = self.queue.iter().filter(|p| p.model == model).count();
        let slot = &self.slots[model];
        if abandon_unused_start(
            slot.phase,
            slot.served,
            slot.waiters.len() + queued,
            slot.start_held || slot.retiring(),
            self.shutting_down,
        ) && slot.gate.close_if_idle()
        {
            log::info!(
                target: LOG_TARGET,
                "{model}: the requests it was started for left as it became ready; stopping it"
            );
            let grace = slot.config.unload_timeout;
            self.begin_stop(model, StopReason::Abandoned, grace);
        }
    }

    pub(super) fn on_acquire(&mut self, id: u64, model: String, reply: Sender<Reply>, hold: bool) {
        if self.shutting_down {
            let _ = reply.send(Reply::Failed(AcquireError::ShuttingDown));
            return;
        }
        let Some(slot) = self.slots.get(&model).filter(|slot| !slot.removed) else {
            let _ = reply.send(Reply::Failed(AcquireError::UnknownModel(model)));
            return;
        };
        let admitted = slot.inflight()
            + slot.waiters.len()
            + self.queue.iter().filter(|p| p.model == model).count();
        if admitted >= slot.config.concurrency_limit {
            let _ = reply.send(Reply::Failed(AcquireError::TooManyRequests(model)));
            return;
        }
        // Fast path: a ready model serves at once, even when an earlier queued request waits
        // to evict it (llama-swap's collation; the swap happens once it drains).
        if slot.phase == Phase::Ready && !slot.retiring() {
            let lease = self.grant(&model);
            let _ = reply.send(Reply::Granted(lease));
            return;
        }
        let _ = reply.send(Reply::Queued);
        self.queue.push_back(Pending {
            id,
            model,
            reply,
            hold,
            memory_wait: None,
        });
    }

    pub(super) fn grant(&mut self, model: &str) -> Lease {
        let slot = self
            .slots
            .get_mut(model)
            .expect("grant is only called for configured models");
        slot.gate.enter_granted();
        Lease {
            model: Arc::from(model),
            upstream: Arc::from(slot.config.proxy.as_str()),
            gate: slot.gate.clone(),
            tx: self.tx.clone(),
            withdrawn: false,
        }
    }

    /// Serves, joins or starts what the queue allows, in arrival order. Requests for a model
    /// that is ready or starting are served or joined at once, which collates A B A B into
    /// A A B B; a swap waits until every model it must evict is idle.
    pub(super) fn pump(&mut self) {
        if self.shutting_down {
            return;
        }
        let mut index = 0;
        let mut memory_blocked = false;
        while index < self.queue.len() {
            let model = self.queue[index].model.clone();
            let phase = self.slots[&model].phase;
            match phase {
                Phase::Stopped if self.memory.is_some() => {
                    if !self.admit_with_memory(index, &mut memory_blocked) {
                        index += 1;
                    }
                }
                Phase::Ready if self.slots[&model].retiring() => index += 1,
                Phase::Ready => {
                    let pending = self.queue.remove(index).expect("index is in bounds");
                    let lease = self.grant(&model);
                    let _ = pending.reply.send(Reply::Granted(lease));
                }
                Phase::Starting => {
                    let pending = self.queue.remove(index).expect("index is in bounds");
                    let slot = self
                        .slots
                        .get_mut(&model)
                        .expect("queued models are configured");
                    slot.start_held |= pending.hold;
                    slot.waiters.push(Waiter {
                        id: pending.id,
                        reply: pending.reply,
                    });
                }
                Phase::Stopping => index += 1,
                Phase::Stopped => {
                    let running: Vec<&str> = self
                        .slots
                        .iter()
                        .filter(|(_, s)| s.phase != Phase::Stopped)
                        .map(|(id, _)| id.as_str())
                        .collect();
                    let swap_plan = plan::plan(&model, &running, &self.config);
                    let evict = swap_plan.evict.clone();
                    if evict.is_empty() {
                        self.matrix_log
                            .note(&model, &swap_plan, &self.config, &self.metrics);
                        let pending = self.queue.remove(index).expect("index is in bounds");
                        self.start(&model);
                        let slot = self.slots.get_mut(&model).expect("configured");
                        if slot.phase == Phase::Starting {
                            slot.start_held = pending.hold;
                            slot.waiters.push(Waiter {
                                id: pending.id,
                                reply: pending.reply,
                            });
                        } else if slot.phase == Phase::Ready {
                            // `checkEndpoint: none`: ready as soon as spawned.
                            let lease = self.grant(&model);
                            let _ = pending.reply.send(Reply::Granted(lease));
                        } else {
                            // The spawn itself failed; `start` recorded why.
                            let message =
                                self.start_failure_message(&model, "could not be started");
                            let _ = pending
                                .reply
                                .send(Reply::Failed(AcquireError::StartFailed(message)));
                        }
                    } else {
                        if self.close_all_if_idle(&evict) {
                            self.matrix_log
                                .note(&model, &swap_plan, &self.config, &self.metrics);
                            self.metrics.record_swap();
                            for id in &evict {
                                log::info!(target: LOG_TARGET, model = model; "swapping: stopping {id} to load {model}");
                                // Every stop uses unloadTimeout (llama-swap waits
                                // healthCheckTimeout here, so a swap away from a server that
                                // ignores SIGTERM made the request wait minutes).
                                let grace = self.slots[id].config.unload_timeout;
                                self.begin_stop(id, StopReason::Swap, grace);
                            }
                        }
                        index += 1;
                    }
                }
            }
        }
    }

    /// Closes the gates of `models` if every one is idle (a swap may evict them); otherwise
    /// leaves them all open.
    pub(super) fn close_all_if_idle(&self, models: &[String]) -> bool {
        let mut closed = Vec::new();
        for id in models {
            let slot = &self.slots[id];
            if slot.idle() && slot.gate.close_if_idle() {
                closed.push(id);
            } else {
                for id in closed {
                    self.open_gate(id);
                }
                return false;
            }
        }
        true
    }
}
