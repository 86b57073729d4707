//! llama-swap's `selectors`: virtual model ids that pick one of their targets per request,
//! and `profiles`: runtime-switchable rewrites of requested model ids.
//!
//! Both are validated here with file:line:key errors (llama-swap §1.7, §1.8): selector ids may
//! not collide with model ids or aliases, targets must resolve, spillover targets must be able
//! to run together; profile targets must name a model, alias or selector, and the old list
//! syntax is rejected with llama-swap's migration message. Routing with them is the proxy's
//! job (`proxy::routing`).

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::error::{ConfigError, Reporter};
use super::typed::{describe, json_object, Fields};
use super::{GroupConfig, MatrixConfig, ModelConfig, Peers, DEFAULT_GROUP_ID};

/// How a selector picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Always the first target.
    Pin,
    /// The first ready target, else the first starting one, else the first (cold start).
    Warm,
    /// Spread requests over running targets up to `spillover` each, then start the next.
    Spillover,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Pin => "pin",
            Strategy::Warm => "warm",
            Strategy::Spillover => "spillover",
        }
    }
}

/// One `selectors.<id>` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorConfig {
    pub id: String,
    pub strategy: Strategy,
    /// The targets as written (model ids or aliases), for `/v1/models`.
    pub targets: Vec<String>,
    /// The targets' model ids, in the same order.
    pub resolved: Vec<String>,
    /// In-flight requests per target before spillover starts the next one (at least 1).
    pub spillover: usize,
    pub name: Option<String>,
    pub description: Option<String>,
    pub unlisted: bool,
    /// Free-form data shown in `/v1/models`; `Null` when absent.
    pub metadata: serde_json::Value,
}

/// One `profiles.<name>` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileConfig {
    pub id: String,
    pub description: String,
    /// Requested id → replacement; `None` (an empty or null target) disables the id.
    pub pins: BTreeMap<String, Option<String>>,
}

const SELECTOR_KEYS: &[&str] = &[
    "strategy",
    "targets",
    "settings",
    "name",
    "description",
    "unlisted",
    "metadata",
];
const PROFILE_KEYS: &[&str] = &["description", "pins"];

/// Reads `selectors`, in id order.
pub(crate) fn build_selectors(
    top: &Fields<'_>,
    models: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    groups: &[GroupConfig],
    matrix: Option<&MatrixConfig>,
    peers: &Peers,
    reporter: &mut Reporter<'_>,
) -> Result<BTreeMap<String, SelectorConfig>, ConfigError> {
    let mut selectors = BTreeMap::new();
    let Some(mapping) = top.mapping("selectors", reporter, "a mapping of selector ids")? else {
        return Ok(selectors);
    };
    let selectors_path = top.path("selectors");
    for (key, value) in mapping {
        let id = key.as_str().unwrap_or_default();
        let path = selectors_path.key(id);
        if id.trim().is_empty() {
            return Err(reporter.error(&path, "selector ids must not be empty"));
        }
        if models.contains_key(id) {
            return Err(reporter.error(
                &path,
                format!("selector id '{id}' conflicts with model id '{id}'"),
            ));
        }
        if let Some(owner) = aliases.get(id) {
            return Err(reporter.error(
                &path,
                format!("selector id '{id}' conflicts with an alias of model '{owner}'"),
            ));
        }
        let Value::Mapping(entry) = value else {
            return Err(reporter.error(
                &path,
                format!(
                    "expected a mapping with strategy and targets, found {}",
                    describe(value)
                ),
            ));
        };
        super::schema::check_keys(entry, &path, SELECTOR_KEYS, reporter);
        let fields = Fields::new(entry, &path);
        let strategy = match fields.string("strategy", reporter)?.as_deref() {
            None | Some("") => {
                return Err(reporter.error(
                    &path.key("strategy"),
                    "strategy is required (warm, pin or spillover)",
                ))
            }
            Some("pin") => Strategy::Pin,
            Some("warm") => Strategy::Warm,
            Some("spillover") => Strategy::Spillover,
            Some(other) => {
                return Err(reporter.error(
                    &path.key("strategy"),
                    format!("unknown strategy '{other}' (valid: warm, pin, spillover)"),
                ))
            }
        };
        let targets = fields.strings("targets", reporter)?;
        if targets.is_empty() {
            return Err(reporter.error(
                &path.key("targets"),
                "targets must contain at least one entry",
            ));
        }
        let mut resolved = Vec::with_capacity(targets.len());
        for (index, target) in targets.iter().enumerate() {
            let target_path = path.key("targets").index(index);
            if mapping.contains_key(target.as_str()) {
                return Err(reporter.error(
                    &target_path,
                    format!("'{target}' is a selector; selector chaining is not supported"),
                ));
            }
            let id = if models.contains_key(target) {
                target.clone()
            } else if let Some(owner) = aliases.get(target) {
                owner.clone()
            } else if peers.resolve(target).is_some() {
                // A peer model (llama-swap allows them as targets): it runs elsewhere, so it
                // never counts as loaded here and takes no part in the coexistence check.
                target.clone()
            } else {
                return Err(reporter.error(&target_path, format!("unknown model '{target}'")));
            };
            resolved.push(id);
        }
        let mut spillover = 1usize;
        if let Some(settings) = fields.mapping("settings", reporter, "a mapping with spillover")? {
            let settings_path = path.key("settings");
            super::schema::check_keys(settings, &settings_path, &["spillover"], reporter);
            if let Some(value) = Fields::new(settings, &settings_path).int("spillover", reporter)? {
                if value < 1 {
                    return Err(reporter.error(
                        &settings_path.key("spillover"),
                        format!("spillover must be 1 or more, found {value}"),
                    ));
                }
                spillover = usize::try_from(value).unwrap_or(usize::MAX);
            }
        }
        if strategy == Strategy::Spillover {
            for (index, target) in resolved.iter().enumerate() {
                if resolved[..index].contains(target) {
                    return Err(reporter.error(
                        &path.key("targets").index(index),
                        format!("targets contain model '{target}' twice (after resolving aliases)"),
                    ));
                }
            }
            let local: Vec<String> = resolved
                .iter()
                .filter(|id| models.contains_key(*id))
                .cloned()
                .collect();
            check_coexistence(&local, groups, matrix)
                .map_err(|message| reporter.error(&path.key("targets"), message))?;
        }
        let metadata = match fields.mapping("metadata", reporter, "a mapping")? {
            Some(mapping) => {
                serde_json::Value::Object(json_object(mapping, &path.key("metadata"), reporter)?)
            }
            None => serde_json::Value::Null,
        };
        selectors.insert(
            id.to_string(),
            SelectorConfig {
                id: id.to_string(),
                strategy,
                targets,
                resolved,
                spillover,
                name: fields.optional_string("name", reporter)?,
                description: fields.optional_string("description", reporter)?,
                unlisted: fields.bool("unlisted", reporter)?.unwrap_or(false),
                metadata,
            },
        );
    }
    Ok(selectors)
}

/// Spillover runs several targets at once, so they must be able to: all in one matrix set, or
/// all in one group that does not swap.
fn check_coexistence(
    targets: &[String],
    groups: &[GroupConfig],
    matrix: Option<&MatrixConfig>,
) -> Result<(), String> {
    if targets.len() <= 1 {
        return Ok(());
    }
    if let Some(matrix) = matrix {
        let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        if super::matrix_solver::can_contain_all(matrix, &refs) {
            return Ok(());
        }
        return Err("spillover targets must all appear together in one matrix set".to_string());
    }
    let group_of = |model: &str| {
        groups
            .iter()
            .find(|group| group.members.iter().any(|member| member == model))
    };
    let first = group_of(&targets[0]).filter(|group| group.id != DEFAULT_GROUP_ID);
    let Some(first) = first else {
        return Err(format!(
            "spillover target '{}' is not in a routing group; spillover targets must share a group with swap: false",
            targets[0]
        ));
    };
    if first.swap {
        return Err(format!(
            "spillover targets must share a group with swap: false; group '{}' swaps",
            first.id
        ));
    }
    for target in &targets[1..] {
        if group_of(target).map(|group| &group.id) != Some(&first.id) {
            return Err(format!(
                "spillover targets must share one routing group; '{target}' is not in group '{}'",
                first.id
            ));
        }
    }
    Ok(())
}

/// Reads `profiles`, in name order.
pub(crate) fn build_profiles(
    top: &Fields<'_>,
    models: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    selectors: &BTreeMap<String, SelectorConfig>,
    peers: &Peers,
    reporter: &mut Reporter<'_>,
) -> Result<BTreeMap<String, ProfileConfig>, ConfigError> {
    let mut profiles = BTreeMap::new();
    let Some(mapping) = top.mapping("profiles", reporter, "a mapping of profile names")? else {
        return Ok(profiles);
    };
    let profiles_path = top.path("profiles");
    for (key, value) in mapping {
        let id = key.as_str().unwrap_or_default();
        let path = profiles_path.key(id);
        if id.trim().is_empty() {
            return Err(reporter.error(&path, "profile names must not be empty"));
        }
        let entry: &Mapping = match value {
            Value::Mapping(entry) => entry,
            Value::Sequence(_) => {
                return Err(reporter.error(
                    &path,
                    "profile must be a mapping with description and pins; the legacy list syntax is no longer supported",
                ))
            }
            other => {
                return Err(reporter.error(
                    &path,
                    format!("expected a mapping with description and pins, found {}", describe(other)),
                ))
            }
        };
        super::schema::check_keys(entry, &path, PROFILE_KEYS, reporter);
        let fields = Fields::new(entry, &path);
        let description = fields.string("description", reporter)?.unwrap_or_default();
        let pins_path = path.key("pins");
        let pins_mapping = match entry.get("pins") {
            Some(Value::Mapping(pins)) if !pins.is_empty() => pins,
            Some(Value::Mapping(_)) | Some(Value::Null) | None => {
                return Err(reporter.error(&pins_path, "pins must contain at least one entry"))
            }
            Some(other) => {
                return Err(reporter.error(
                    &pins_path,
                    format!(
                        "expected a mapping of requested ids to targets, found {}",
                        describe(other)
                    ),
                ))
            }
        };
        let pin_fields = Fields::new(pins_mapping, &pins_path);
        let mut pins = BTreeMap::new();
        for pin_key in pins_mapping.keys() {
            let pin = pin_key.as_str().unwrap_or_default();
            if pin.trim().is_empty() {
                return Err(reporter.error(&pins_path, "pin names must not be empty"));
            }
            let target = pin_fields.string(pin, reporter)?.filter(|t| !t.is_empty());
            if let Some(target) = &target {
                let known = models.contains_key(target)
                    || aliases.contains_key(target)
                    || selectors.contains_key(target)
                    || peers.resolve(target).is_some();
                if !known {
                    return Err(reporter.error(
                        &pins_path.key(pin),
                        format!("pin '{pin}' references unknown model '{target}'"),
                    ));
                }
            }
            pins.insert(pin.to_string(), target);
        }
        profiles.insert(
            id.to_string(),
            ProfileConfig {
                id: id.to_string(),
                description,
                pins,
            },
        );
    }
    Ok(profiles)
}
