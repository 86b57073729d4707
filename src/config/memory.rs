//! `swapd.memory` and the per-model `models.<id>.swapd.memory`: the memory budgets that let
//! several models co-reside, and the footprints operators declare.
//!
//! This module owns the typed form of those settings and their parsing (sizes such as `48GiB`,
//! `"80%"` of `MemTotal`, `auto`), with errors that name file, line and key. The decisions that
//! use them are the pure function in `supervisor::memory`; observation lives in
//! `supervisor::sampler`. Without a `swapd.memory` section nothing here changes behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::{Mapping, Value};

use super::error::{ConfigError, KeyPath, Reporter};
use super::schema;

/// The memory settings (`swapd.memory`). Its presence switches memory-aware scheduling on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Budget in bytes for the resident memory of model processes (`ram`), percentages
    /// already resolved against `MemTotal`; `None` when RAM is not budgeted.
    pub ram: Option<u64>,
    /// Budget for GPU memory (`gpu`); `None` when GPU memory is not budgeted.
    pub gpu: Option<GpuBudget>,
    /// Head room (`reserve`, default 1 GiB): subtracted from `gpu: auto`, and how far the
    /// observed total may exceed a budget before an idle model is evicted.
    pub reserve: u64,
    /// Where learned footprints are kept (`stateFile`); `None` means the default location.
    pub state_file: Option<PathBuf>,
    /// Footprints declared per model (`models.<id>.swapd.memory`), by model id.
    pub declared: BTreeMap<String, DeclaredFootprint>,
}

/// `swapd.memory.gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBudget {
    /// Total VRAM (all GPUs as one pool) minus `reserve`, read when swapd starts.
    Auto,
    Bytes(u64),
}

/// A model's declared footprint; a missing kind is learned by observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeclaredFootprint {
    pub ram: Option<u64>,
    pub gpu: Option<u64>,
}

impl MemoryConfig {
    /// One line for `--check-config`: budgets, reserve and declared footprints.
    pub fn summary(&self) -> String {
        let ram = self.ram.map_or("none".to_string(), human_bytes);
        let gpu = match self.gpu {
            None => "none".to_string(),
            Some(GpuBudget::Auto) => "auto".to_string(),
            Some(GpuBudget::Bytes(bytes)) => human_bytes(bytes),
        };
        let declared: Vec<String> = self
            .declared
            .iter()
            .map(|(id, d)| {
                let part = |kind: &str, value: Option<u64>| {
                    value.map(|bytes| format!("{kind} {}", human_bytes(bytes)))
                };
                let parts: Vec<String> = [part("ram", d.ram), part("gpu", d.gpu)]
                    .into_iter()
                    .flatten()
                    .collect();
                format!("{id} ({})", parts.join(", "))
            })
            .collect();
        format!(
            "memory-aware scheduling: ram {ram}, gpu {gpu}, reserve {}; declared: {}",
            human_bytes(self.reserve),
            if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            }
        )
    }
}

const MEMORY: &[&str] = &["ram", "gpu", "reserve", "stateFile"];
const MODEL_MEMORY: &[&str] = &["ram", "gpu"];
const GIB: u64 = 1024 * 1024 * 1024;

/// Builds the memory settings from the top-level `swapd` mapping (if any) and the models.
/// `mem_total` reads `MemTotal` in bytes, for percentages.
pub(crate) fn build(
    swapd: Option<&Mapping>,
    swapd_path: &KeyPath,
    models: &Mapping,
    models_path: &KeyPath,
    mem_total: &dyn Fn() -> Option<u64>,
    reporter: &mut Reporter<'_>,
) -> Result<Option<MemoryConfig>, ConfigError> {
    let declared = build_declared(models, models_path, reporter)?;
    let path = swapd_path.key("memory");
    let mapping = match swapd.and_then(|m| m.get("memory")) {
        None | Some(Value::Null) => {
            if let Some(id) = declared.keys().next() {
                reporter.warn(
                    &models_path.key(id).key("swapd").key("memory"),
                    "ignored: memory-aware scheduling is off without swapd.memory",
                );
            }
            return Ok(None);
        }
        Some(Value::Mapping(mapping)) => mapping,
        Some(other) => {
            return Err(reporter.error(
                &path,
                format!(
                    "expected a mapping with ram, gpu, reserve or stateFile, found {}",
                    super::typed::describe(other)
                ),
            ))
        }
    };
    schema::check_keys(mapping, &path, MEMORY, reporter);
    let ram = match present(mapping, "ram") {
        None => None,
        Some(value) => {
            let key = path.key("ram");
            let text = scalar(value, &key, reporter)?;
            match text.trim().strip_suffix('%') {
                Some(percent) => {
                    let percent: f64 = percent
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
                        .ok_or_else(|| {
                            reporter.error(
                                &key,
                                format!("expected a percentage between 0 and 100, found '{text}'"),
                            )
                        })?;
                    let total = mem_total().ok_or_else(|| {
                        reporter.error(&key, "a percentage needs MemTotal from /proc/meminfo, which could not be read")
                    })?;
                    Some((total as f64 * percent / 100.0) as u64)
                }
                None => Some(size(&text).map_err(|message| reporter.error(&key, message))?),
            }
        }
    };
    let gpu = match present(mapping, "gpu") {
        None => None,
        Some(value) => {
            let key = path.key("gpu");
            let text = scalar(value, &key, reporter)?;
            if text.trim().eq_ignore_ascii_case("auto") {
                Some(GpuBudget::Auto)
            } else {
                Some(GpuBudget::Bytes(
                    size(&text).map_err(|message| reporter.error(&key, message))?,
                ))
            }
        }
    };
    let reserve = match present(mapping, "reserve") {
        None => GIB,
        Some(value) => {
            let key = path.key("reserve");
            let text = scalar(value, &key, reporter)?;
            size(&text).map_err(|message| reporter.error(&key, message))?
        }
    };
    let state_file = match present(mapping, "stateFile") {
        None => None,
        Some(value) => {
            let text = scalar(value, &path.key("stateFile"), reporter)?;
            (!text.trim().is_empty()).then(|| PathBuf::from(text))
        }
    };
    if ram.is_none() && gpu.is_none() {
        reporter.warn(
            &path,
            "neither ram nor gpu is set: models in no group co-reside without any limit",
        );
    }
    Ok(Some(MemoryConfig {
        ram,
        gpu,
        reserve,
        state_file,
        declared,
    }))
}

fn build_declared(
    models: &Mapping,
    models_path: &KeyPath,
    reporter: &mut Reporter<'_>,
) -> Result<BTreeMap<String, DeclaredFootprint>, ConfigError> {
    let mut declared = BTreeMap::new();
    for (id, model) in models {
        let id = id.as_str().unwrap_or_default();
        let Some(swapd) = model.as_mapping().and_then(|m| present(m, "swapd")) else {
            continue;
        };
        let swapd_path = models_path.key(id).key("swapd");
        let Value::Mapping(swapd) = swapd else {
            return Err(reporter.error(
                &swapd_path,
                format!(
                    "expected a mapping of swapd settings, found {}",
                    super::typed::describe(swapd)
                ),
            ));
        };
        schema::check_keys(swapd, &swapd_path, schema::MODEL_SWAPD, reporter);
        let Some(memory) = present(swapd, "memory") else {
            continue;
        };
        let path = swapd_path.key("memory");
        let Value::Mapping(memory) = memory else {
            return Err(reporter.error(
                &path,
                format!(
                    "expected a mapping with ram and/or gpu, found {}",
                    super::typed::describe(memory)
                ),
            ));
        };
        schema::check_keys(memory, &path, MODEL_MEMORY, reporter);
        let mut footprint = DeclaredFootprint::default();
        for (kind, slot) in [("ram", &mut footprint.ram), ("gpu", &mut footprint.gpu)] {
            if let Some(value) = present(memory, kind) {
                let key = path.key(kind);
                let text = scalar(value, &key, reporter)?;
                *slot = Some(size(&text).map_err(|message| reporter.error(&key, message))?);
            }
        }
        declared.insert(id.to_string(), footprint);
    }
    Ok(declared)
}

/// The value of `key`, an explicit null counting as absent.
fn present<'m>(mapping: &'m Mapping, key: &str) -> Option<&'m Value> {
    mapping.get(key).filter(|value| !value.is_null())
}

fn scalar(value: &Value, path: &KeyPath, reporter: &Reporter<'_>) -> Result<String, ConfigError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        other => Err(reporter.error(
            path,
            format!(
                "expected a size such as 8GiB, found {}",
                super::typed::describe(other)
            ),
        )),
    }
}

/// Parses a size: plain bytes, or a number (decimals allowed) with one of the units
/// `KiB MiB GiB TiB` (powers of 1024), `KB MB GB TB` (powers of 1000) or `B`; spaces between
/// number and unit are allowed and units are case-insensitive.
pub fn size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
            "'{text}' is not a size: use bytes or a number with KiB, MiB, GiB, TiB, KB, MB or GB"
        ))
        }
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("'{text}' is not a size: the number is missing or invalid"))?;
    let bytes = value * multiplier as f64;
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("'{text}' is too large"));
    }
    Ok(bytes as u64)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

/// Renders bytes for people: `21.0 GiB`, `512.0 MiB`, `900 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(text: &str) -> Result<crate::config::Loaded, ConfigError> {
        crate::config::parse(text, Path::new("config.yaml"), &|_| None)
    }

    #[test]
    fn sizes_in_every_unit() {
        for (text, bytes) in [
            ("1024", 1024),
            ("1KiB", 1024),
            ("1 KiB", 1024),
            ("2MiB", 2 << 20),
            ("48GiB", 48 << 30),
            ("1.5GiB", 3 << 29),
            ("1TiB", 1 << 40),
            ("1KB", 1000),
            ("3MB", 3_000_000),
            ("24GB", 24_000_000_000),
            ("7gib", 7 << 30),
            ("100B", 100),
        ] {
            assert_eq!(size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "GiB", "12 parsecs", "-1GiB", "1.2.3GiB", "1e400"] {
            assert!(size(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn memory_section_parses_with_declared_footprints() {
        let loaded = load(
            "swapd:\n  memory:\n    ram: 48GiB\n    gpu: auto\n    reserve: 512MiB\n    stateFile: /tmp/f.json\n\
             models:\n  a:\n    cmd: srv\n    proxy: http://localhost:1\n    swapd:\n      memory: {gpu: 21GiB, ram: 2GiB}\n  \
             b:\n    cmd: srv\n    proxy: http://localhost:2\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let memory = loaded.config.memory.expect("memory is set");
        assert_eq!(memory.ram, Some(48 << 30));
        assert_eq!(memory.gpu, Some(GpuBudget::Auto));
        assert_eq!(memory.reserve, 512 << 20);
        assert_eq!(memory.state_file, Some(PathBuf::from("/tmp/f.json")));
        assert_eq!(
            memory.declared.get("a"),
            Some(&DeclaredFootprint {
                ram: Some(2 << 30),
                gpu: Some(21 << 30)
            })
        );
        assert_eq!(memory.declared.get("b"), None);
        assert_eq!(
            memory.summary(),
            "memory-aware scheduling: ram 48.0 GiB, gpu auto, reserve 512.0 MiB; declared: a (ram 2.0 GiB, gpu 21.0 GiB)"
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn without_the_section_memory_is_off() {
        let loaded = load("models:\n  a:\n    cmd: srv\n    proxy: http://localhost:1\n    swapd:\n      memory: {ram: 1GiB}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.config.memory, None);
        assert!(loaded
            .warnings
            .iter()
            .any(|w| w.contains("models.a.swapd.memory")));
    }

    #[test]
    fn percentages_resolve_against_mem_total() {
        let loaded = load("swapd:\n  memory:\n    ram: \"50%\"\nmodels: {}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let total = mem_total().expect("this test runs on Linux");
        assert_eq!(loaded.config.memory.and_then(|m| m.ram), Some(total / 2));
    }

    #[test]
    fn bad_sizes_name_file_line_and_key() {
        let error = load("swapd:\n  memory:\n    ram: 48 parsecs\nmodels: {}\n").unwrap_err();
        assert_eq!(error.key, "swapd.memory.ram");
        assert_eq!(error.line, Some(3));
        assert!(error.to_string().contains("config.yaml:3"), "{error}");
        let error = load(
            "swapd:\n  memory: {ram: 1GiB}\nmodels:\n  a:\n    cmd: srv\n    proxy: http://localhost:1\n    swapd:\n      memory:\n        gpu: lots\n",
        )
        .unwrap_err();
        assert_eq!(error.key, "models.a.swapd.memory.gpu");
        assert_eq!(error.line, Some(9));
        let error = load("swapd:\n  memory:\n    ram: \"150%\"\nmodels: {}\n").unwrap_err();
        assert_eq!(error.key, "swapd.memory.ram");
        let error = load("swapd:\n  memory: 12\nmodels: {}\n").unwrap_err();
        assert_eq!(error.key, "swapd.memory");
    }

    #[test]
    fn unknown_memory_keys_warn() {
        let loaded = load("swapd:\n  memory: {ram: 1GiB, reserv: 1GiB}\nmodels: {}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("did you mean 'reserve'")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(21 << 30), "21.0 GiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(human_bytes(900), "900 B");
    }
}
