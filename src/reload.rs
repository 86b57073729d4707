//! Live configuration reload that only restarts what changed.
//!
//! Reloads come from SIGHUP, from the `--watch-config` poller and from
//! `POST /api/config/reload`; all of them become [`ReloadRequest`]s on one channel served by the
//! daemon's main thread, so reloads are serialised and a burst collapses into one reload of the
//! final file. A config that fails to load is rejected whole and the old one keeps serving.
//! The supervisor decides per model what to keep, update in place, restart or stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::config;
use crate::proxy::App;
use crate::supervisor::{Phase, ReloadSummary};

/// A request to reload; `reply` (if any) receives the outcome.
pub struct ReloadRequest {
    pub reply: Option<Sender<Result<ReloadSummary, String>>>,
}

/// Reloads the file once for this request and every other one already waiting, answering all.
pub fn serve(
    sources: &config::Sources,
    app: &App,
    first: ReloadRequest,
    pending: &Receiver<ReloadRequest>,
) {
    let mut requests = vec![first];
    requests.extend(pending.try_iter());
    let outcome = reload(sources, app);
    match &outcome {
        Ok(summary) => log::info!("config reloaded from {}: {summary:?}", sources.describe()),
        Err(error) => log::error!("config reload rejected, the old config keeps serving: {error}"),
    }
    for request in requests {
        if let Some(reply) = request.reply {
            let _ = reply.send(outcome.clone());
        }
    }
}

fn reload(sources: &config::Sources, app: &App) -> Result<ReloadSummary, String> {
    let loaded = config::load_sources(sources).map_err(|error| error.to_string())?;
    for warning in &loaded.warnings {
        log::warn!("config: {warning}");
    }
    let new = Arc::new(loaded.config);
    let old = app.config();
    if old.log_to_stdout != new.log_to_stdout
        || old.limits != new.limits
        || old.log_format != new.log_format
    {
        log::warn!("reload: logToStdout and the swapd: limits take effect only after a restart");
    }
    if old.access != new.access || old.api_keys.is_empty() != new.api_keys.is_empty() {
        for warning in crate::proxy::origin::exposure_warnings(&new, app.local_addr) {
            log::warn!("{warning}");
        }
    }
    // The supervisor first, so a model that just became routable is known to it.
    let summary = app.supervisor.reconfigure(new.clone());
    app.set_config(new.clone());
    // Preload only what is not already running.
    let running: Vec<String> = app
        .supervisor
        .snapshot()
        .into_iter()
        .filter(|status| status.phase != Phase::Stopped)
        .map(|status| status.model)
        .collect();
    let to_load: Vec<String> = new
        .preload
        .iter()
        .filter(|model| !running.contains(model))
        .cloned()
        .collect();
    crate::daemon::preload(&app.supervisor, to_load);
    Ok(summary)
}

/// What identifies one version of the file: it changes when the file is edited in place,
/// replaced by an editor (new inode), or when a symlink is pointed elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
    link_target: Option<PathBuf>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: metadata.modified().ok(),
        length: metadata.len(),
        inode: metadata.ino(),
        link_target: std::fs::read_link(path).ok(),
    })
}

/// The stamps of every source: the file, and each YAML file in the directory (so adding,
/// removing or editing one is a change).
fn stamps(sources: &config::Sources) -> Option<Vec<(PathBuf, Stamp)>> {
    let mut all = Vec::new();
    if let Some(file) = &sources.file {
        all.push((file.clone(), stamp(file)?));
    }
    if sources.dir.is_some() {
        let dir_only = config::Sources {
            file: None,
            dir: sources.dir.clone(),
        };
        for path in dir_only.files().ok()? {
            if let Some(found) = stamp(&path) {
                all.push((path, found));
            }
        }
    }
    Some(all)
}

/// Polls the sources every `interval` and asks for a reload when they changed and have been
/// stable for one more short look (an editor may still be writing). A file that disappears is
/// ignored until it comes back; in the directory, adding or removing a file is a change.
pub fn watch(sources: config::Sources, interval: Duration, requests: Sender<ReloadRequest>) {
    // The first stamp is taken here, before the daemon says it is listening, not when the
    // thread first runs: a change made right after startup must count as a change.
    let mut last = stamps(&sources);
    let spawned = thread::Builder::new()
        .name("config-watch".to_string())
        .stack_size(128 * 1024)
        .spawn(move || loop {
            thread::sleep(interval);
            let Some(now) = stamps(&sources) else {
                continue;
            };
            if Some(&now) == last.as_ref() {
                continue;
            }
            thread::sleep(Duration::from_millis(100));
            let settled = stamps(&sources);
            if settled.as_ref() != Some(&now) {
                continue;
            }
            log::info!("{} changed; reloading", sources.describe());
            last = settled;
            if requests.send(ReloadRequest { reply: None }).is_err() {
                return;
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot start the config watcher: {error}");
    }
}
