//! One model's process lifecycle: start (spawn, then the health probe or ready at once), health
//! passed or failed, exit (expected, during start, or a crash), stop (`cmdStop` or SIGTERM,
//! SIGKILL after `unloadTimeout`), the TTL and kill timers, and unload requests. Reports tagged
//! with an older generation change nothing.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::effects::{ProbeTarget, Signal};
use super::state::{last_lines, ttl_deadline, State, StopReason};
use super::LOG_TARGET;
use super::{process, AcquireError, Phase, Reply};

impl State {
    pub(super) fn start(&mut self, model: &str) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let slot = self.slots.get_mut(model).expect("configured");
        let config = slot.config.clone();
        log::info!(target: LOG_TARGET, model = model; "starting {model}: {}", config.cmd_display);
        let pid = match self.effects.spawn(model, generation, &config) {
            Ok(pid) => pid,
            Err(error) => {
                log::error!(target: LOG_TARGET, model = model; "cannot start {model}: {}: {error}", config.cmd_display);
                self.logs.model(model).write(
                    format!("swapd: cannot start '{}': {error}\n", config.cmd[0]).as_bytes(),
                );
                return;
            }
        };
        slot.phase = Phase::Starting;
        slot.start_held = false;
        slot.spawned_at = self.effects.now();
        slot.generation = generation;
        slot.pid = Some(pid);
        slot.kill_at = None;
        match &config.check_endpoint {
            None => {
                slot.phase = Phase::Ready;
                let now = self.effects.now();
                slot.last_used = now;
                let took = now.saturating_duration_since(slot.spawned_at);
                self.metrics.record_start(model, true, took);
                self.open_gate(model);
                self.wake_waiters(model);
            }
            Some(endpoint) => {
                let cancel = Arc::new(AtomicBool::new(false));
                slot.probe_cancel = Some(cancel.clone());
                self.effects.start_probe(ProbeTarget {
                    model: model.to_string(),
                    generation,
                    base: config.proxy.clone(),
                    endpoint: endpoint.to_string(),
                    timeout: self.config.health_check_timeout,
                    cancel,
                });
            }
        }
    }

    pub(super) fn on_healthy(&mut self, model: &str, generation: u64) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if slot.generation != generation || slot.phase != Phase::Starting {
            return;
        }
        slot.phase = Phase::Ready;
        slot.probe_cancel = None;
        let now = self.effects.now();
        slot.last_used = now;
        slot.served = false;
        let took = now.saturating_duration_since(slot.spawned_at);
        self.metrics.record_start(model, true, took);
        log::info!(
            target: LOG_TARGET,
            model = model;
            "{model} is ready ({:.0} ms after spawn)",
            took.as_secs_f64() * 1000.0
        );
        self.open_gate(model);
        self.wake_waiters(model);
    }

    pub(super) fn wake_waiters(&mut self, model: &str) {
        let waiters = std::mem::take(&mut self.slots.get_mut(model).expect("configured").waiters);
        for waiter in waiters {
            let lease = self.grant(model);
            // A waiter whose client left drops the lease with the channel: released at once.
            let _ = waiter.reply.send(Reply::Granted(lease));
        }
    }

    pub(super) fn fail_waiters(&mut self, model: &str, error: AcquireError) {
        let slot = self.slots.get_mut(model).expect("configured");
        for waiter in slot.waiters.drain(..) {
            let _ = waiter.reply.send(Reply::Failed(error.clone()));
        }
    }

    pub(super) fn on_health_failed(&mut self, model: &str, generation: u64, reason: String) {
        let Some(slot) = self.slots.get(model) else {
            return;
        };
        if slot.generation != generation || slot.phase != Phase::Starting {
            return;
        }
        let message = self.start_failure_message(model, &reason);
        log::error!(target: LOG_TARGET, "{message}");
        self.metrics.record_start(
            model,
            false,
            self.effects
                .now()
                .saturating_duration_since(slot.spawned_at),
        );
        self.fail_waiters(model, AcquireError::StartFailed(message));
        let grace = self.slots[model].config.unload_timeout;
        self.begin_stop(model, StopReason::StartFailed, grace);
    }

    pub(super) fn start_failure_message(&self, model: &str, reason: &str) -> String {
        let tail = self
            .logs
            .existing_model(model)
            .map(|buffer| last_lines(&buffer.history(), 10))
            .unwrap_or_default();
        if tail.is_empty() {
            format!("model '{model}' failed to start: {reason}")
        } else {
            format!("model '{model}' failed to start: {reason}; last output:\n{tail}")
        }
    }

    pub(super) fn on_exited(&mut self, model: &str, generation: u64, status: ExitStatus) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let described = process::describe_exit(&status);
        let pid = slot.pid.take();
        if let Some(pid) = pid {
            // The leader is gone; take any grandchildren still in its group with it.
            self.effects.signal(pid, Signal::Kill);
        }
        if let Some(cancel) = slot.probe_cancel.take() {
            cancel.store(true, Ordering::Relaxed);
        }
        let previous = slot.phase;
        let spawned_at = slot.spawned_at;
        slot.gate.close();
        slot.phase = Phase::Stopped;
        slot.kill_at = None;
        slot.idle_override = None;
        slot.stop_waiters.clear();
        self.metrics.record_child_exit(model);
        match previous {
            Phase::Starting => {
                self.metrics.record_start(
                    model,
                    false,
                    self.effects.now().saturating_duration_since(spawned_at),
                );
                let message = self.start_failure_message(
                    model,
                    &format!("process exited during start with {described}"),
                );
                log::error!(target: LOG_TARGET, "{message}");
                self.fail_waiters(model, AcquireError::StartFailed(message));
            }
            Phase::Ready => {
                self.metrics.record_eviction("crash");
                log::warn!(target: LOG_TARGET, model = model; "{model}: upstream process exited unexpectedly with {described}");
            }
            Phase::Stopping | Phase::Stopped => {
                log::info!(target: LOG_TARGET, model = model; "{model} stopped ({described})");
            }
        }
        if let Some(buffer) = self.logs.existing_model(model) {
            buffer.clear();
        }
        self.became_stopped(model);
    }

    pub(super) fn on_unload(&mut self, model: Option<String>, done: Sender<()>) {
        let targets: Vec<String> = match model {
            Some(model) => vec![model],
            None => self.slots.keys().cloned().collect(),
        };
        for id in targets {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.phase == Phase::Stopped {
                continue;
            }
            slot.stop_waiters.push(done.clone());
            // Requests queued for a model being unloaded are answered, not left hanging.
            let mut index = 0;
            while index < self.queue.len() {
                if self.queue[index].model == id {
                    let pending = self.queue.remove(index).expect("index is in bounds");
                    let _ = pending
                        .reply
                        .send(Reply::Failed(AcquireError::Unloaded(id.clone())));
                } else {
                    index += 1;
                }
            }
            if matches!(self.slots[&id].phase, Phase::Starting | Phase::Ready) {
                let grace = self.slots[&id].config.unload_timeout;
                self.begin_stop(&id, StopReason::Unload, grace);
            }
        }
    }

    pub(super) fn begin_stop(&mut self, model: &str, reason: StopReason, grace: Duration) {
        let slot = self.slots.get_mut(model).expect("configured");
        slot.gate.close();
        if let Some(cancel) = slot.probe_cancel.take() {
            cancel.store(true, Ordering::Relaxed);
        }
        let Some(pid) = slot.pid else {
            slot.phase = Phase::Stopped;
            slot.idle_override = None;
            self.became_stopped(model);
            return;
        };
        log::info!(target: LOG_TARGET, model = model; "stopping {model} (pid {pid}, reason {reason:?})");
        match reason {
            StopReason::Swap => self.metrics.record_eviction("swap"),
            StopReason::Ttl => self.metrics.record_eviction("ttl"),
            StopReason::Unload => self.metrics.record_eviction("unload"),
            StopReason::Abandoned => self.metrics.record_eviction("abandoned"),
            StopReason::Memory => self.metrics.record_eviction("memory"),
            StopReason::StartFailed | StopReason::Shutdown | StopReason::Reload => {}
        }
        slot.phase = Phase::Stopping;
        slot.kill_at = Some(self.effects.now() + grace);
        let waiters_error = match reason {
            StopReason::Shutdown => AcquireError::ShuttingDown,
            _ => AcquireError::Unloaded(model.to_string()),
        };
        let config = slot.config.clone();
        self.fail_waiters(model, waiters_error);
        match &config.cmd_stop {
            Some(cmd_stop) => {
                let command = cmd_stop.replace("${PID}", &pid.to_string());
                let result = crate::config::split_command(&command)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    .and_then(|argv| self.effects.run_stop_command(&argv, &config.env));
                if let Err(error) = result {
                    log::warn!(target: LOG_TARGET, model = model; "{model}: cmdStop '{command}' failed ({error}); sending SIGTERM");
                    self.effects.signal(pid, Signal::Term);
                }
            }
            None => self.effects.signal(pid, Signal::Term),
        }
    }

    pub(super) fn on_timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            if let (Phase::Stopping, Some(kill_at), Some(pid)) =
                (slot.phase, slot.kill_at, slot.pid)
            {
                if now >= kill_at {
                    log::warn!(
                        target: LOG_TARGET,
                        model = id.as_str();
                        "{id} (pid {pid}) did not stop within its grace period; sending SIGKILL"
                    );
                    self.effects.signal(pid, Signal::Kill);
                    slot.kill_at = None;
                }
            }
            if let Some(deadline) = ttl_deadline(slot) {
                if now >= deadline && !self.shutting_down {
                    expired.push(id.clone());
                }
            }
        }
        for id in expired {
            // A request may have taken the gate since the deadline was computed.
            if !self.slots[&id].gate.close_if_idle() {
                continue;
            }
            log::info!(
                target: LOG_TARGET,
                model = id.as_str();
                "{id}: unloading after {:.1}s idle (ttl)",
                self.slots[&id]
                    .idle_time()
                    .unwrap_or_default()
                    .as_secs_f64()
            );
            let grace = self.slots[&id].config.unload_timeout;
            self.begin_stop(&id, StopReason::Ttl, grace);
        }
    }
}
