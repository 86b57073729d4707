//! Live configuration reload that only restarts what changed.
//!
//! Reloads come from SIGHUP, from the `--watch-config` poller and from
//! `POST /api/config/reload`; all of them become [`ReloadRequest`]s on one channel served by the
//! daemon's main thread, so reloads are serialised and a burst collapses into one reload of the
//! final file. A config that fails to load is rejected whole and the old one keeps serving.
//! The supervisor decides per model what to keep, update in place, restart or stop.
//!
//! This module talks only to the config cell ([`config::Current`], which it alone writes) and
//! the supervisor; what the HTTP front does about a new config reaches it as a callback the
//! daemon supplies, so reload and the proxy do not import each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{self, Config};
pub use crate::supervisor::ReloadRequest;
use crate::supervisor::{ReloadOutcome, ReloadSummary, Supervisor};

/// Called with (old, new) once the supervisor has the new config and before handlers see it.
pub type OnChange = Box<dyn Fn(&Config, &Config) + Send + Sync>;

/// Everything a reload touches.
pub struct Reloader {
    pub sources: config::Sources,
    /// The config handlers read; replaced only here.
    pub config: Arc<config::Current>,
    pub supervisor: Supervisor,
    /// What the HTTP front does about the change (routing state, exposure warnings).
    pub on_change: OnChange,
}

impl Reloader {
    /// Reloads once for this request and every other one already waiting, answering all.
    pub fn serve(&self, first: ReloadRequest, pending: &Receiver<ReloadRequest>) {
        let mut requests = vec![first];
        requests.extend(pending.try_iter());
        let outcome: ReloadOutcome = self.reload();
        match &outcome {
            Ok(summary) => log::info!(
                "config reloaded from {}: {summary:?}",
                self.sources.describe()
            ),
            Err(error) => {
                log::error!("config reload rejected, the old config keeps serving: {error}")
            }
        }
        for request in requests {
            if let Some(reply) = request.reply {
                let _ = reply.send(outcome.clone());
            }
        }
    }

    fn reload(&self) -> Result<ReloadSummary, String> {
        let loaded = config::load_sources(&self.sources).map_err(|error| error.to_string())?;
        for warning in &loaded.warnings {
            log::warn!("config: {warning}");
        }
        let new = Arc::new(loaded.config);
        let old = self.config.get();
        if old.log_to_stdout != new.log_to_stdout
            || old.limits != new.limits
            || old.log_format != new.log_format
        {
            log::warn!(
                "reload: logToStdout and the swapd: limits take effect only after a restart"
            );
        }
        // The supervisor first, so a model that just became routable is known to it.
        let summary = self.supervisor.reconfigure(new.clone());
        (self.on_change)(&old, &new);
        self.config.set(new.clone());
        // Preload only what is not already running.
        crate::supervisor::preload(&self.supervisor, &new.preload);
        Ok(summary)
    }
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
