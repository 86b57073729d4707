//! The configuration in force: one cell every reader shares and only a reload writes.
//!
//! Handlers read it on every request (a cheap `Arc` clone under a read lock); the reload path
//! (`reload.rs`) replaces it whole after the supervisor has taken the new config, so no reader
//! ever sees half of a reload. The supervisor thread keeps its own per-model view (a model keeps
//! the settings it was started with until it restarts), fed by `Supervisor::reconfigure`.

use std::sync::{Arc, RwLock};

use super::Config;

/// The shared, swappable configuration.
#[derive(Debug)]
pub struct Current {
    config: RwLock<Arc<Config>>,
}

impl Current {
    pub fn new(config: Arc<Config>) -> Current {
        Current {
            config: RwLock::new(config),
        }
    }

    /// The configuration in force now.
    pub fn get(&self) -> Arc<Config> {
        self.config
            .read()
            .expect("the config lock is never held across a panic")
            .clone()
    }

    /// Replaces the configuration (reloads only); readers see the old or the new one, whole.
    pub fn set(&self, config: Arc<Config>) {
        *self
            .config
            .write()
            .expect("the config lock is never held across a panic") = config;
    }
}
