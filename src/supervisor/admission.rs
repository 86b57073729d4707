//! The supervisor's side of memory-aware scheduling: the glue between its state and the pure
//! decision in [`super::memory`], kept out of `state.rs` and `queue.rs` so the state machine
//! stays readable.
//!
//! Everything here runs on the supervisor thread, as methods of [`State`]. `pump` hands a
//! queued request for a stopped model to [`State::admit_with_memory`] when `swapd.memory` is
//! set; samples from the sampler thread arrive through [`State::on_observed`].

use super::memory::{self, Decision, Footprint, Resident};
use super::plan;
use super::sampler::Target;
use super::state::{State, StopReason, Waiter};
use super::{footprints, AcquireError, Phase, Reply};

impl State {
    /// Creates, updates or drops the memory state after the config changed.
    pub(super) fn reconfigure_memory(&mut self) {
        match (&self.config.memory, &mut self.memory) {
            (None, memory) => {
                if memory.take().is_some() {
                    *self
                        .memory_report
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                }
            }
            (Some(config), Some(memory)) => memory.reconfigure(config),
            (Some(config), memory @ None) => {
                *memory = Some(footprints::MemoryState::new(
                    config,
                    self.tx.clone(),
                    self.memory_report.clone(),
                ));
            }
        }
    }

    /// The running models as the decision sees them.
    fn residents(&self, except: &str) -> Vec<Resident<'_>> {
        let Some(memory) = &self.memory else {
            return Vec::new();
        };
        self.slots
            .iter()
            .filter(|(id, slot)| slot.phase != Phase::Stopped && id.as_str() != except)
            .map(|(id, slot)| Resident {
                id: id.as_str(),
                footprint: memory.resident_footprint(id, &slot.config.cmd_display),
                idle: slot.idle() && !slot.retiring(),
                last_used: slot.last_used,
            })
            .collect()
    }

    /// Decides for the queued request at `index` (its model is stopped). Returns whether the
    /// request left the queue (started, or refused). `blocked` keeps the queue first in, first
    /// out: once one request waits for memory, later ones do not start models before it.
    pub(super) fn admit_with_memory(&mut self, index: usize, blocked: &mut bool) -> bool {
        let model = self.queue[index].model.clone();
        let Some(memory) = &self.memory else {
            return false;
        };
        let cmd = &self.slots[&model].config.cmd_display;
        let footprint = memory.footprint(&model, cmd);
        if *blocked {
            // Behind a waiting request nothing starts, but a model that can never fit is
            // still refused at once rather than after the queue ahead of it drained.
            let Some(message) = memory::too_large(&model, footprint, memory.budgets) else {
                return false;
            };
            self.reject_too_large(index, message);
            return true;
        }
        // With the matrix router, its solution replaces the group rules; memory applies on top.
        let router_plan = self.config.matrix.is_some().then(|| {
            let running: Vec<&str> = self
                .slots
                .iter()
                .filter(|(_, s)| s.phase != Phase::Stopped)
                .map(|(id, _)| id.as_str())
                .collect();
            plan::plan(&model, &running, &self.config)
        });
        let decision = memory::decide_with_router(
            &model,
            footprint,
            &self.residents(&model),
            memory.budgets,
            &self.config.groups,
            router_plan.as_ref().map(|p| p.evict.as_slice()),
        );
        match decision {
            Decision::Reject(message) => {
                self.reject_too_large(index, message);
                true
            }
            Decision::Wait { for_memory } => {
                if for_memory {
                    let now = self.effects.now();
                    self.queue[index].memory_wait.get_or_insert(now);
                }
                *blocked = true;
                false
            }
            Decision::Start { swap, memory } if swap.is_empty() && memory.is_empty() => {
                let pending = self.queue.remove(index).expect("index is in bounds");
                if let Some(router_plan) = &router_plan {
                    self.matrix_log
                        .note(&model, router_plan, &self.config, &self.metrics);
                }
                if let (Some(since), Some(state)) = (pending.memory_wait, &mut self.memory) {
                    state.record_wait(self.effects.now().saturating_duration_since(since));
                }
                self.start_for(pending.id, &model, pending.reply, pending.hold);
                true
            }
            Decision::Start { swap, memory } => {
                if !memory.is_empty() {
                    let now = self.effects.now();
                    self.queue[index].memory_wait.get_or_insert(now);
                }
                let all: Vec<String> = swap.iter().chain(memory.iter()).cloned().collect();
                if self.close_all_if_idle(&all) {
                    if let Some(router_plan) = &router_plan {
                        self.matrix_log
                            .note(&model, router_plan, &self.config, &self.metrics);
                    }
                    // A swap in `swapd_swaps_total`'s sense (models stopped to make room),
                    // whichever rule asked for it; the evictions carry the reason.
                    self.metrics.record_swap();
                    // Every stop uses the stopped model's unloadTimeout, as in `pump`.
                    for id in &swap {
                        log::info!(model = model.as_str(); "swapping: stopping {id} to load {model}");
                        let grace = self.slots[id].config.unload_timeout;
                        self.begin_stop(id, StopReason::Swap, grace);
                    }
                    for id in &memory {
                        log::info!(model = model.as_str(); "memory: stopping idle {id} to make room for {model}");
                        let grace = self.slots[id].config.unload_timeout;
                        self.begin_stop(id, StopReason::Memory, grace);
                    }
                }
                *blocked = true;
                false
            }
        }
    }

    fn reject_too_large(&mut self, index: usize, message: String) {
        log::warn!(model = self.queue[index].model.as_str(); "{message}");
        let pending = self.queue.remove(index).expect("index is in bounds");
        let _ = pending
            .reply
            .send(Reply::Failed(AcquireError::TooLarge(message)));
    }

    /// Starts `model` for one request and answers or parks it, as `pump` does without memory.
    fn start_for(
        &mut self,
        id: u64,
        model: &str,
        reply: crossbeam_channel::Sender<Reply>,
        hold: bool,
    ) {
        self.start(model);
        let slot = self.slots.get_mut(model).expect("configured");
        if slot.phase == Phase::Starting {
            slot.start_held = hold;
            slot.waiters.push(Waiter { id, reply });
        } else if slot.phase == Phase::Ready {
            // `checkEndpoint: none`: ready as soon as spawned.
            let lease = self.grant(model);
            let _ = reply.send(Reply::Granted(lease));
        } else {
            // The spawn itself failed; `start` recorded why.
            let message = self.start_failure_message(model, "could not be started");
            let _ = reply.send(Reply::Failed(AcquireError::StartFailed(message)));
        }
    }

    /// A sample from the sampler: record it, and if the models together outgrew a budget by
    /// more than `reserve`, evict the least recently used idle one.
    pub(super) fn on_observed(&mut self, model: &str, generation: u64, observed: Footprint) {
        let Some(slot) = self.slots.get(model) else {
            return;
        };
        if slot.generation != generation || slot.phase == Phase::Stopped {
            return;
        }
        let cmd = slot.config.cmd_display.clone();
        let Some(memory) = &mut self.memory else {
            return;
        };
        memory.observe(model, &cmd, observed);
        let (budgets, reserve) = (memory.budgets, memory.config.reserve);
        let residents = self.residents("");
        let Some((victim, kind, used)) =
            memory::over_budget(&residents, budgets, reserve, &self.config.groups)
        else {
            return;
        };
        let victim = victim.to_string();
        if !self.slots[&victim].gate.close_if_idle() {
            return;
        }
        log::warn!(
            model = victim.as_str();
            "memory: models use {} of {} (budget {}); stopping the least recently used idle model {victim}",
            crate::config::human_bytes(used),
            kind.as_str(),
            crate::config::human_bytes(match kind {
                memory::Kind::Ram => budgets.ram.unwrap_or(0),
                memory::Kind::Gpu => budgets.gpu.unwrap_or(0),
            })
        );
        let grace = self.slots[&victim].config.unload_timeout;
        self.begin_stop(&victim, StopReason::Memory, grace);
    }

    /// Once per loop turn: tell the sampler what runs and publish the report for handlers.
    pub(super) fn memory_tick(&mut self) {
        let Some(memory) = &mut self.memory else {
            return;
        };
        let mut targets: Vec<Target> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| {
                Some(Target {
                    model: id.clone(),
                    generation: slot.generation,
                    pid: slot.pid?,
                })
            })
            .collect();
        targets.sort_by(|a, b| a.model.cmp(&b.model));
        memory.sync_targets(targets);
        memory.publish(
            self.slots
                .iter()
                .map(|(id, slot)| (id.as_str(), slot.config.cmd_display.as_str())),
        );
    }
}
