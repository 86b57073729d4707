//! Preloading (`hooks.on_startup.preload`): the models to start without waiting for a request,
//! loaded one after another on a background thread through the supervisor's normal admission.
//!
//! Used at startup and after a reload; both ask only for models that are not running, so a
//! reload never restarts a preloaded model that kept its settings.

use std::thread;

use super::{Phase, Supervisor};

/// Loads those of `models` that are not running, one after another, in the background.
pub fn preload(supervisor: &Supervisor, models: &[String]) {
    if models.is_empty() {
        return;
    }
    let running: Vec<String> = supervisor
        .snapshot()
        .into_iter()
        .filter(|status| status.phase != Phase::Stopped)
        .map(|status| status.model)
        .collect();
    let models: Vec<String> = models
        .iter()
        .filter(|model| !running.contains(model))
        .cloned()
        .collect();
    if models.is_empty() {
        return;
    }
    let supervisor = supervisor.clone();
    let spawned = thread::Builder::new()
        .name("preload".to_string())
        .spawn(move || {
            for model in models {
                match supervisor.acquire_blocking(&model) {
                    Ok(lease) => {
                        log::info!(model = model.as_str(); "preloaded {model}");
                        drop(lease);
                    }
                    Err(error) => {
                        log::error!(model = model.as_str(); "preload of {model} failed: {error}")
                    }
                }
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot start the preload thread: {error}");
    }
}
