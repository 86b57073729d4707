//! Applying a reloaded configuration: added models get a slot, models whose start settings
//! changed keep serving until drained and then restart with the new ones, removed models are
//! stopped once drained and forgotten, and per-request settings take effect at once.

use std::sync::Arc;

use super::state::{Pending, Slot, State, StopReason};
use super::LOG_TARGET;
use super::{AcquireError, Phase, ReloadSummary, Reply};
use crate::config::{Config, ModelConfig};

impl State {
    /// A model reached `Stopped`: apply a reload's pending settings or forget a removed model.
    pub(super) fn became_stopped(&mut self, model: &str) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if let Some(config) = slot.pending_config.take() {
            log::info!(target: LOG_TARGET, model = model; "{model}: new settings from the reload take effect");
            slot.config = config;
            self.publish_gates();
        }
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if slot.removed {
            self.fail_waiters(model, AcquireError::UnknownModel(model.to_string()));
            self.slots.remove(model);
            self.publish_gates();
            let (gone, kept): (Vec<Pending>, Vec<Pending>) =
                self.queue.drain(..).partition(|p| p.model == model);
            self.queue = kept.into();
            for pending in gone {
                let _ = pending
                    .reply
                    .send(Reply::Failed(AcquireError::UnknownModel(pending.model)));
            }
            log::info!(target: LOG_TARGET, model = model; "{model}: removed by the reload");
        }
    }

    /// Stops retiring models (replaced or removed by a reload) once nothing uses them.
    pub(super) fn retire_drained(&mut self) {
        let drained: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.retiring())
            .filter(|(_, slot)| {
                slot.phase == Phase::Stopped
                    || (slot.phase == Phase::Ready
                        && slot.inflight() == 0
                        && slot.waiters.is_empty())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in drained {
            if self.slots[&id].phase == Phase::Stopped {
                self.became_stopped(&id);
            } else {
                let grace = self.slots[&id].config.unload_timeout;
                self.begin_stop(&id, StopReason::Reload, grace);
            }
        }
    }

    pub(super) fn on_reconfigure(&mut self, config: Arc<Config>) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        for (id, slot) in self.slots.iter_mut() {
            if !config.models.contains_key(id) {
                slot.removed = true;
                summary.removed.push(id.clone());
            }
        }
        // Requests queued for a removed model cannot be served any more.
        let mut index = 0;
        while index < self.queue.len() {
            let model = &self.queue[index].model;
            if self.slots.get(model).is_none_or(|slot| slot.removed) {
                let pending = self.queue.remove(index).expect("index is in bounds");
                let _ = pending.reply.send(Reply::Failed(AcquireError::UnknownModel(
                    pending.model.clone(),
                )));
            } else {
                index += 1;
            }
        }
        for (id, model) in &config.models {
            let model = Arc::new(model.clone());
            match self.slots.get_mut(id) {
                None => {
                    let now = self.effects.now();
                    self.slots.insert(id.clone(), Slot::new(model, now));
                    summary.added.push(id.clone());
                }
                Some(slot) => {
                    slot.removed = false;
                    if same_start(&slot.config, &model) {
                        if *slot.config != *model {
                            summary.updated.push(id.clone());
                        }
                        slot.config = model;
                        slot.pending_config = None;
                    } else if slot.phase == Phase::Stopped {
                        slot.config = model;
                        slot.pending_config = None;
                        summary.changed.push(id.clone());
                    } else {
                        slot.pending_config = Some(model);
                        summary.changed.push(id.clone());
                    }
                }
            }
        }
        self.config = config;
        self.reconfigure_memory();
        let ids: Vec<String> = self.slots.keys().cloned().collect();
        for id in ids {
            if self.slots[&id].retiring() {
                self.slots[&id].gate.close();
            } else {
                self.open_gate(&id);
            }
        }
        self.publish_gates();
        log::info!(
            target: LOG_TARGET,
            "reload: added {:?}, removed {:?}, restarting {:?}, updated in place {:?}",
            summary.added,
            summary.removed,
            summary.changed,
            summary.updated
        );
        summary
    }
}

/// Whether two settings start the same process (command, environment, address, health check),
/// so a reload may keep the running one.
pub(super) fn same_start(old: &ModelConfig, new: &ModelConfig) -> bool {
    old.cmd == new.cmd
        && old.env == new.env
        && old.proxy == new.proxy
        && old.check_endpoint == new.check_endpoint
}
