//! Footprints: what each model is declared, learned and observed to use, the resolved budgets,
//! and the state file that keeps learned footprints across restarts.
//!
//! [`MemoryState`] belongs to the supervisor thread (one owner); it exists only while
//! `swapd.memory` is configured. Handlers read a copy, the [`MemoryReport`], which the
//! supervisor publishes after every change (like the gate registry), so `/running` and
//! `/metrics` never wait for the supervisor. The state file is small JSON written atomically
//! (a temporary file renamed over the old one); a missing or corrupt file is a warning, never
//! a failure, and a learned footprint is dropped when the model's command changed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use crate::config::{GpuBudget, MemoryConfig};

use super::memory::{Budgets, Footprint};
use super::sampler::{self, Target};
use super::Command;

/// The memory view handlers read; `None` while memory-aware scheduling is off.
pub type ReportHandle = Arc<RwLock<Option<MemoryReport>>>;

/// What `/running` and `/metrics` show about memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryReport {
    pub budgets: Budgets,
    /// By model id: only models with something declared, learned or observed.
    pub models: BTreeMap<String, ModelMemory>,
    /// Total time requests spent queued because their model did not fit yet.
    pub wait_seconds_total: f64,
    /// Requests that had to wait for memory.
    pub waits_total: u64,
}

/// One model's footprints, by source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelMemory {
    pub declared: Footprint,
    /// The largest footprint observed in this and earlier runs (with the same command).
    pub learned: Footprint,
    /// The latest sample of the running process group; empty while stopped.
    pub observed: Footprint,
}

impl MemoryReport {
    /// The `memory` entry of one model in `/running`: each source per kind (bytes or null),
    /// the footprint scheduling uses and where it came from.
    pub fn running_json(&self, model: &str) -> Value {
        let entry = self.models.get(model).copied().unwrap_or_default();
        let pair = |f: Footprint| json!({ "ram": f.ram, "gpu": f.gpu });
        let source = |declared: Option<u64>, learned: Option<u64>| {
            if declared.is_some() {
                "declared"
            } else if learned.is_some() {
                "learned"
            } else {
                "unknown"
            }
        };
        let planned = Footprint {
            ram: entry.declared.ram.or(entry.learned.ram),
            gpu: entry.declared.gpu.or(entry.learned.gpu),
        };
        json!({
            "footprint": pair(planned),
            "source": {
                "ram": source(entry.declared.ram, entry.learned.ram),
                "gpu": source(entry.declared.gpu, entry.learned.gpu),
            },
            "declared": pair(entry.declared),
            "learned": pair(entry.learned),
            "observed": pair(entry.observed),
        })
    }

    /// The budgets and the observed total, for the top of `/running`.
    pub fn summary_json(&self) -> Value {
        let used = |kind: fn(&Footprint) -> Option<u64>| -> u64 {
            self.models.values().filter_map(|m| kind(&m.observed)).sum()
        };
        json!({
            "budget": { "ram": self.budgets.ram, "gpu": self.budgets.gpu },
            "observed": { "ram": used(|f| f.ram), "gpu": used(|f| f.gpu) },
        })
    }

    /// The memory families in the Prometheus text format, appended to `/metrics`.
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP swapd_model_memory_bytes Memory a running model's process group uses, as last sampled.\n# TYPE swapd_model_memory_bytes gauge"
        );
        for (model, entry) in &self.models {
            let model = escape_label(model);
            for (kind, value) in [("ram", entry.observed.ram), ("gpu", entry.observed.gpu)] {
                if let Some(value) = value {
                    let _ = writeln!(
                        out,
                        "swapd_model_memory_bytes{{model=\"{model}\",kind=\"{kind}\"}} {value}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP swapd_model_footprint_bytes The footprint scheduling plans with (declared, else learned).\n# TYPE swapd_model_footprint_bytes gauge"
        );
        for (model, entry) in &self.models {
            let model = escape_label(model);
            for (kind, value) in [
                ("ram", entry.declared.ram.or(entry.learned.ram)),
                ("gpu", entry.declared.gpu.or(entry.learned.gpu)),
            ] {
                if let Some(value) = value {
                    let _ = writeln!(
                        out,
                        "swapd_model_footprint_bytes{{model=\"{model}\",kind=\"{kind}\"}} {value}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP swapd_memory_budget_bytes The memory budget (swapd.memory), by kind.\n# TYPE swapd_memory_budget_bytes gauge"
        );
        for (kind, value) in [("ram", self.budgets.ram), ("gpu", self.budgets.gpu)] {
            if let Some(value) = value {
                let _ = writeln!(out, "swapd_memory_budget_bytes{{kind=\"{kind}\"}} {value}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP swapd_memory_wait_seconds Time requests spent queued until their model fitted.\n# TYPE swapd_memory_wait_seconds summary"
        );
        let _ = writeln!(
            out,
            "swapd_memory_wait_seconds_sum {}",
            self.wait_seconds_total
        );
        let _ = writeln!(out, "swapd_memory_wait_seconds_count {}", self.waits_total);
        out
    }
}

/// A Prometheus label value with `\\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A learned footprint and the command it was measured with.
#[derive(Debug, Clone, PartialEq)]
struct Learned {
    footprint: Footprint,
    cmd: String,
}

/// Learned footprints are written when they grew by more than this since the last write, so
/// the small jitter of a running process does not rewrite the file every two seconds.
const WRITE_STEP: u64 = 1 << 20;

pub struct MemoryState {
    pub config: MemoryConfig,
    pub budgets: Budgets,
    learned: BTreeMap<String, Learned>,
    written: BTreeMap<String, Footprint>,
    observed: HashMap<String, Footprint>,
    state_file: PathBuf,
    sampler: Sender<Vec<Target>>,
    sent_targets: Vec<Target>,
    report: ReportHandle,
    wait_seconds_total: f64,
    waits_total: u64,
    /// Something shown in the report changed since it was last published.
    dirty: bool,
}

impl MemoryState {
    /// Resolves the budgets, loads learned footprints and starts the sampler thread.
    pub fn new(config: &MemoryConfig, tx: Sender<Command>, report: ReportHandle) -> MemoryState {
        let budgets = resolve_budgets(config, sampler::gpu_total());
        let state_file = config.state_file.clone().unwrap_or_else(default_state_file);
        let learned = load_state(&state_file);
        log::info!(
            "memory-aware scheduling: RAM budget {}, GPU budget {}, learned footprints in {}",
            budgets
                .ram
                .map_or("none".to_string(), crate::config::human_bytes),
            budgets
                .gpu
                .map_or("none".to_string(), crate::config::human_bytes),
            state_file.display()
        );
        let written = learned
            .iter()
            .map(|(id, entry)| (id.clone(), entry.footprint))
            .collect();
        MemoryState {
            config: config.clone(),
            budgets,
            learned,
            written,
            observed: HashMap::new(),
            state_file,
            sampler: sampler::start(tx),
            sent_targets: Vec::new(),
            report,
            wait_seconds_total: 0.0,
            waits_total: 0,
            dirty: true,
        }
    }

    /// Takes a reloaded `swapd.memory`; budgets are resolved again, learned data is kept.
    pub fn reconfigure(&mut self, config: &MemoryConfig) {
        if *config != self.config {
            self.budgets = resolve_budgets(config, sampler::gpu_total());
            if let Some(path) = &config.state_file {
                if *path != self.state_file {
                    self.state_file = path.clone();
                    self.learned = load_state(path);
                }
            }
            self.config = config.clone();
            self.dirty = true;
        }
    }

    /// The footprint a start is planned with: declared per kind, else learned with the same
    /// command, else unknown.
    pub fn footprint(&self, model: &str, cmd: &str) -> Footprint {
        let declared = self.declared(model);
        let learned = self.learned(model, cmd);
        Footprint {
            ram: declared.ram.or(learned.ram),
            gpu: declared.gpu.or(learned.gpu),
        }
    }

    /// The footprint of a running model: the planned one, or more if it grew past it.
    pub fn resident_footprint(&self, model: &str, cmd: &str) -> Footprint {
        let observed = self.observed.get(model).copied().unwrap_or_default();
        self.footprint(model, cmd).max(observed)
    }

    fn declared(&self, model: &str) -> Footprint {
        self.config
            .declared
            .get(model)
            .map(|d| Footprint {
                ram: d.ram,
                gpu: d.gpu,
            })
            .unwrap_or_default()
    }

    fn learned(&self, model: &str, cmd: &str) -> Footprint {
        self.learned
            .get(model)
            .filter(|entry| entry.cmd == cmd)
            .map(|entry| entry.footprint)
            .unwrap_or_default()
    }

    /// Records a sample of a running model; learned footprints grow with it and are saved.
    pub fn observe(&mut self, model: &str, cmd: &str, observed: Footprint) {
        self.observed.insert(model.to_string(), observed);
        self.dirty = true;
        let before = self.learned(model, cmd);
        let after = before.max(observed);
        if after != before {
            self.learned.insert(
                model.to_string(),
                Learned {
                    footprint: after,
                    cmd: cmd.to_string(),
                },
            );
        }
        let written = self.written.get(model).copied().unwrap_or_default();
        let grew = |now: Option<u64>, then: Option<u64>| {
            now.unwrap_or(0) > then.unwrap_or(0).saturating_add(WRITE_STEP)
                || (now.is_some() && then.is_none())
        };
        if grew(after.ram, written.ram) || grew(after.gpu, written.gpu) {
            self.written.insert(model.to_string(), after);
            self.save();
        }
    }

    /// Tells the sampler what runs now (only when that changed) and forgets the samples of
    /// processes that are gone.
    pub fn sync_targets(&mut self, targets: Vec<Target>) {
        if targets == self.sent_targets {
            return;
        }
        self.observed
            .retain(|model, _| targets.iter().any(|t| &t.model == model));
        let _ = self.sampler.send(targets.clone());
        self.sent_targets = targets;
        self.dirty = true;
    }

    /// Counts a request that waited `waited` for memory before its model started.
    pub fn record_wait(&mut self, waited: Duration) {
        self.wait_seconds_total += waited.as_secs_f64();
        self.waits_total += 1;
        self.dirty = true;
    }

    /// Publishes the report for handlers if it changed. `models` are the configured
    /// (id, command) pairs.
    pub fn publish<'a>(&mut self, models: impl Iterator<Item = (&'a str, &'a str)>) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let mut report = MemoryReport {
            budgets: self.budgets,
            models: BTreeMap::new(),
            wait_seconds_total: self.wait_seconds_total,
            waits_total: self.waits_total,
        };
        for (id, cmd) in models {
            let entry = ModelMemory {
                declared: self.declared(id),
                learned: self.learned(id, cmd),
                observed: self.observed.get(id).copied().unwrap_or_default(),
            };
            if entry != ModelMemory::default() {
                report.models.insert(id.to_string(), entry);
            }
        }
        *self.report.write().unwrap_or_else(PoisonError::into_inner) = Some(report);
    }

    fn save(&self) {
        let models: serde_json::Map<String, Value> = self
            .learned
            .iter()
            .map(|(id, entry)| {
                (
                    id.clone(),
                    json!({
                        "ram": entry.footprint.ram,
                        "gpu": entry.footprint.gpu,
                        "cmd": entry.cmd,
                    }),
                )
            })
            .collect();
        let text = json!({ "version": 1, "models": models }).to_string();
        if let Err(error) = write_atomically(&self.state_file, text.as_bytes()) {
            log::warn!(
                "cannot save learned memory footprints to {}: {error}",
                self.state_file.display()
            );
        }
    }
}

/// The budgets with `gpu: auto` resolved against the GPUs' total memory (`None` when no
/// GPU could be read, with a warning).
pub fn resolve_budgets(config: &MemoryConfig, gpu_total: Option<u64>) -> Budgets {
    let gpu = match config.gpu {
        None => None,
        Some(GpuBudget::Bytes(bytes)) => Some(bytes),
        Some(GpuBudget::Auto) => match gpu_total {
            Some(total) => Some(total.saturating_sub(config.reserve)),
            None => {
                log::warn!(
                    "swapd.memory.gpu is auto but no GPU memory could be read (no nvidia-smi on PATH, no AMD sysfs); GPU memory is not budgeted"
                );
                None
            }
        },
    };
    Budgets {
        ram: config.ram,
        gpu,
    }
}

/// `$XDG_STATE_HOME/swapd/footprints.json`, else `~/.local/state/swapd/footprints.json`.
pub fn default_state_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("state"))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("swapd").join("footprints.json")
}

fn load_state(path: &Path) -> BTreeMap<String, Learned> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            log::warn!(
                "no learned memory footprints read from {} ({error}); models without a declared footprint start alone until measured",
                path.display()
            );
            return BTreeMap::new();
        }
    };
    match parse_state(&text) {
        Ok(learned) => learned,
        Err(message) => {
            log::warn!(
                "ignoring the learned memory footprints in {}: {message}",
                path.display()
            );
            BTreeMap::new()
        }
    }
}

fn parse_state(text: &str) -> Result<BTreeMap<String, Learned>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let models = value
        .get("models")
        .and_then(Value::as_object)
        .ok_or("no \"models\" object")?;
    let mut learned = BTreeMap::new();
    for (id, entry) in models {
        let bytes = |kind: &str| entry.get(kind).and_then(Value::as_u64);
        let Some(cmd) = entry.get("cmd").and_then(Value::as_str) else {
            continue;
        };
        learned.insert(
            id.clone(),
            Learned {
                footprint: Footprint {
                    ram: bytes("ram"),
                    gpu: bytes("gpu"),
                },
                cmd: cmd.to_string(),
            },
        );
    }
    Ok(learned)
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`, so a crash
/// leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp.{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(gpu: Option<GpuBudget>) -> MemoryConfig {
        MemoryConfig {
            ram: Some(8 << 30),
            gpu,
            reserve: 1 << 30,
            state_file: None,
            declared: BTreeMap::new(),
        }
    }

    #[test]
    fn auto_gpu_budget_is_total_minus_reserve() {
        let budgets = resolve_budgets(&config(Some(GpuBudget::Auto)), Some(24 << 30));
        assert_eq!(budgets.gpu, Some(23 << 30));
        assert_eq!(budgets.ram, Some(8 << 30));
        assert_eq!(
            resolve_budgets(&config(Some(GpuBudget::Auto)), None).gpu,
            None
        );
        let fixed = resolve_budgets(&config(Some(GpuBudget::Bytes(5))), Some(24 << 30));
        assert_eq!(fixed.gpu, Some(5));
    }

    #[test]
    fn state_round_trips_and_tolerates_damage() {
        let dir = std::env::temp_dir().join(format!("swapd-footprints-{}", std::process::id()));
        let path = dir.join("nested").join("footprints.json");
        let mut learned = BTreeMap::new();
        learned.insert(
            "a".to_string(),
            Learned {
                footprint: Footprint {
                    ram: Some(123),
                    gpu: None,
                },
                cmd: "srv -m a".to_string(),
            },
        );
        let text =
            json!({"version": 1, "models": {"a": {"ram": 123, "gpu": null, "cmd": "srv -m a"}}})
                .to_string();
        write_atomically(&path, text.as_bytes()).expect("the temp dir is writable");
        assert_eq!(load_state(&path), learned);
        std::fs::write(&path, "{not json").expect("the temp dir is writable");
        assert!(load_state(&path).is_empty());
        assert!(load_state(&dir.join("missing.json")).is_empty());
        assert!(parse_state("{\"version\":1}").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_state_file_follows_xdg() {
        // Only checks the shape; the variables are read, not set, to keep tests independent.
        assert!(default_state_file().ends_with("swapd/footprints.json"));
    }
}
