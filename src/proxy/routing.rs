//! Request-time routing before a model is resolved: the active profile's pins, then
//! selectors (llama-swap §1.7, §1.8), and the `/api/profiles` endpoints.
//!
//! A pin rewrites the requested model id (empty target: the id is disabled, 404); pins do not
//! chain. A selector id is replaced by one of its targets, chosen by [`choose`], a pure
//! function of the targets' phases and this selector's in-flight counts. This module owns the
//! only mutable state involved: which profile is active (none at start and after a reload) and
//! the per-selector in-flight counters, which a [`SelectorLease`] gives back on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::config::{Config, SelectorConfig, SelectorStrategy};
use crate::supervisor::{ModelStatus, Phase};

/// The active profile and the spillover counters, shared by every handler.
#[derive(Default)]
pub struct RoutingState {
    active_profile: Mutex<Option<String>>,
    spill: Arc<Mutex<HashMap<String, Spill>>>,
}

/// One selector's in-flight counts by target model id, and its round-robin cursor.
#[derive(Default)]
struct Spill {
    inflight: HashMap<String, usize>,
    next: usize,
}

/// Held while a request routed by a selector is in flight; gives its count back on drop.
pub struct SelectorLease {
    spill: Arc<Mutex<HashMap<String, Spill>>>,
    selector: String,
    target: String,
}

impl Drop for SelectorLease {
    fn drop(&mut self) {
        let mut spill = self
            .spill
            .lock()
            .expect("the selector counters lock is never held across a panic");
        if let Some(entry) = spill.get_mut(&self.selector) {
            if let Some(count) = entry.inflight.get_mut(&self.target) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

impl RoutingState {
    pub fn active_profile(&self) -> Option<String> {
        self.active_profile
            .lock()
            .expect("the profile lock is never held across a panic")
            .clone()
    }

    /// Sets (or with `None` clears) the active profile.
    pub fn set_active_profile(&self, name: Option<String>) {
        *self
            .active_profile
            .lock()
            .expect("the profile lock is never held across a panic") = name;
    }

    /// A reload deactivates the profile (llama-swap starts every config with none active) and
    /// forgets counters of selectors that no longer exist.
    pub fn reset_for(&self, config: &Config) {
        self.set_active_profile(None);
        self.spill
            .lock()
            .expect("the selector counters lock is never held across a panic")
            .retain(|id, _| config.selectors.contains_key(id));
    }
}

/// Why a request could not be routed: an HTTP status and message.
pub type RouteError = (u16, String);

/// Applies the active profile's pin to `requested`: `Ok(None)` when no pin applies.
pub fn apply_pin(
    state: &RoutingState,
    config: &Config,
    requested: &str,
) -> Result<Option<String>, RouteError> {
    let Some(active) = state.active_profile() else {
        return Ok(None);
    };
    let Some(profile) = config.profiles.get(&active) else {
        return Ok(None);
    };
    match profile.pins.get(requested) {
        None => Ok(None),
        Some(Some(target)) => Ok(Some(target.clone())),
        Some(None) => Err((
            404,
            format!("model '{requested}' is disabled by the active profile '{active}'"),
        )),
    }
}

/// Applies the active profile to `/upstream/<rest>`: the longest pin that is `rest` or a
/// path-segment prefix of it is replaced by its target. `Ok(None)` when no pin applies.
pub fn apply_upstream_pin(
    state: &RoutingState,
    config: &Config,
    rest: &str,
) -> Result<Option<String>, RouteError> {
    let Some(active) = state.active_profile() else {
        return Ok(None);
    };
    let Some(profile) = config.profiles.get(&active) else {
        return Ok(None);
    };
    let best = profile
        .pins
        .iter()
        .filter(|(pin, _)| {
            rest == pin.as_str()
                || rest
                    .strip_prefix(pin.as_str())
                    .is_some_and(|after| after.starts_with('/'))
        })
        .max_by_key(|(pin, _)| pin.len());
    match best {
        None => Ok(None),
        Some((pin, Some(target))) => Ok(Some(format!("{target}{}", &rest[pin.len()..]))),
        Some((pin, None)) => Err((
            404,
            format!("model '{pin}' is disabled by the active profile '{active}'"),
        )),
    }
}

/// A target's state as a selector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetState {
    pub phase: Phase,
    /// Requests this selector has in flight on the target.
    pub inflight: usize,
}

/// Which target (by index) a selector routes to, or `None` when nothing is available.
/// `round_robin` breaks ties between equally busy spillover targets.
pub fn choose(
    strategy: SelectorStrategy,
    spillover: usize,
    targets: &[TargetState],
    round_robin: usize,
) -> Option<usize> {
    match strategy {
        SelectorStrategy::Pin => Some(0).filter(|_| !targets.is_empty()),
        SelectorStrategy::Warm => targets
            .iter()
            .position(|t| t.phase == Phase::Ready)
            .or_else(|| targets.iter().position(|t| t.phase == Phase::Starting))
            .or(Some(0).filter(|_| !targets.is_empty())),
        SelectorStrategy::Spillover => {
            let active: Vec<usize> = (0..targets.len())
                .filter(|&i| targets[i].phase != Phase::Stopping)
                .filter(|&i| {
                    matches!(targets[i].phase, Phase::Ready | Phase::Starting)
                        || targets[i].inflight > 0
                })
                .collect();
            let least_busy = || {
                let min = active.iter().map(|&i| targets[i].inflight).min()?;
                let ties: Vec<usize> = active
                    .iter()
                    .copied()
                    .filter(|&i| targets[i].inflight == min)
                    .collect();
                Some((ties[round_robin % ties.len()], min))
            };
            if let Some((index, busy)) = least_busy() {
                if busy < spillover {
                    return Some(index);
                }
            }
            let cold = (0..targets.len())
                .find(|&i| targets[i].phase == Phase::Stopped && targets[i].inflight == 0);
            cold.or_else(|| least_busy().map(|(index, _)| index))
        }
    }
}

/// Resolves selector `selector` to one of its targets (as written: a model id or alias),
/// counting the request against that model until the returned lease is dropped.
pub fn select(
    state: &RoutingState,
    selector: &SelectorConfig,
    statuses: &[ModelStatus],
) -> Result<(String, SelectorLease), RouteError> {
    let mut spill = state
        .spill
        .lock()
        .expect("the selector counters lock is never held across a panic");
    let entry = spill.entry(selector.id.clone()).or_default();
    let targets: Vec<TargetState> = selector
        .resolved
        .iter()
        .map(|id| TargetState {
            phase: statuses
                .iter()
                .find(|s| &s.model == id)
                .map_or(Phase::Stopped, |s| s.phase),
            inflight: entry.inflight.get(id).copied().unwrap_or(0),
        })
        .collect();
    let Some(index) = choose(selector.strategy, selector.spillover, &targets, entry.next) else {
        return Err((
            503,
            format!(
                "selector '{}' has no target available (all are stopping)",
                selector.id
            ),
        ));
    };
    entry.next = entry.next.wrapping_add(1);
    let target = selector.resolved[index].clone();
    *entry.inflight.entry(target.clone()).or_insert(0) += 1;
    // The request names the target as the selector lists it (an alias keeps its filters).
    Ok((
        selector.targets[index].clone(),
        SelectorLease {
            spill: state.spill.clone(),
            selector: selector.id.clone(),
            target,
        },
    ))
}

/// `/v1/models` records for selectors and the active profile's pins, in llama-swap's shape.
pub fn list_records(
    state: &RoutingState,
    config: &Config,
    statuses: &[ModelStatus],
    created: u64,
) -> Vec<Value> {
    let mut records = Vec::new();
    let running = |id: &str| {
        statuses
            .iter()
            .any(|s| s.model == id && matches!(s.phase, Phase::Ready | Phase::Starting))
    };
    for selector in config.selectors.values() {
        if selector.unlisted {
            continue;
        }
        let loaded = match selector.strategy {
            SelectorStrategy::Pin => running(&selector.resolved[0]),
            _ => selector.resolved.iter().any(|id| running(id)),
        };
        let mut llamaswap = match &selector.metadata {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        llamaswap.insert("type".into(), json!("selector"));
        llamaswap.insert("strategy".into(), json!(selector.strategy.as_str()));
        llamaswap.insert("targets".into(), json!(selector.targets));
        if selector.strategy == SelectorStrategy::Spillover {
            llamaswap.insert("spillover".into(), json!(selector.spillover));
        }
        let mut record = json!({
            "id": selector.id,
            "object": "model",
            "created": created,
            "owned_by": "swapd",
            "meta": {"llamaswap": llamaswap},
            "status": {"value": if loaded { "loaded" } else { "unloaded" }},
        });
        if let Some(name) = &selector.name {
            record["name"] = json!(name);
        }
        if let Some(description) = &selector.description {
            record["description"] = json!(description);
        }
        records.push(record);
    }
    let active = state.active_profile();
    if let Some(profile) = active.as_ref().and_then(|name| config.profiles.get(name)) {
        for (pin, target) in &profile.pins {
            let shadows = config.resolve_model(pin).is_some() || config.selectors.contains_key(pin);
            if target.is_none() || shadows {
                continue;
            }
            records.push(json!({
                "id": pin,
                "object": "model",
                "created": created,
                "owned_by": "swapd",
                "meta": {"llamaswap": {"type": "profile"}},
                "status": {"value": "unloaded"},
            }));
        }
    }
    records
}

/// `GET /api/profiles`.
pub fn profiles_json(state: &RoutingState, config: &Config) -> Value {
    let profiles: Vec<Value> = config
        .profiles
        .values()
        .map(|profile| {
            let pins: serde_json::Map<String, Value> = profile
                .pins
                .iter()
                .map(|(pin, target)| (pin.clone(), json!(target.clone().unwrap_or_default())))
                .collect();
            json!({"id": profile.id, "description": profile.description, "pins": pins})
        })
        .collect();
    json!({"active": state.active_profile(), "profiles": profiles})
}

/// `PUT /api/profiles/active` with body `{"name": "x" | null}`: the new active profile, or an
/// error status and message (400 bad body, 404 unknown profile).
pub fn set_profile(
    state: &RoutingState,
    config: &Config,
    body: &[u8],
) -> Result<Value, RouteError> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|_| (400, "invalid profile request".to_string()))?;
    let Value::Object(object) = parsed else {
        return Err((400, "invalid profile request".to_string()));
    };
    let name = match object.get("name") {
        None => return Err((400, "profile name is required".to_string())),
        Some(Value::Null) => None,
        Some(Value::String(name)) if name.is_empty() => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => return Err((400, "profile name must be a string or null".to_string())),
    };
    if let Some(name) = &name {
        if !config.profiles.contains_key(name) {
            return Err((404, format!("profile '{name}' not found")));
        }
    }
    state.set_active_profile(name);
    Ok(json!({"active": state.active_profile()}))
}

/// Replaces the `model` field of a JSON object body.
pub fn replace_json_model(body: &[u8], model: &str) -> Result<Vec<u8>, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Value::Object(object) = &mut value else {
        return Err("expected a JSON object".to_string());
    };
    object.insert("model".to_string(), Value::String(model.to_string()));
    Ok(serde_json::to_vec(&value).expect("a JSON value always serialises"))
}

/// Replaces the `model` parameter of a query string, percent-encoding the new value.
pub fn replace_query_model(query: &str, model: &str) -> String {
    let encoded: String = model
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~/:".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    query
        .split('&')
        .map(|pair| {
            if pair.split('=').next() == Some("model") {
                format!("model={encoded}")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(phase: Phase, inflight: usize) -> TargetState {
        TargetState { phase, inflight }
    }
    use Phase::{Ready, Starting, Stopped, Stopping};
    use SelectorStrategy::{Pin, Spillover, Warm};

    #[test]
    fn pin_always_takes_the_first_target() {
        assert_eq!(choose(Pin, 1, &[t(Stopped, 0), t(Ready, 0)], 0), Some(0));
    }

    #[test]
    fn warm_prefers_ready_then_starting_then_the_first() {
        assert_eq!(
            choose(Warm, 1, &[t(Stopped, 0), t(Starting, 0), t(Ready, 0)], 0),
            Some(2)
        );
        assert_eq!(
            choose(Warm, 1, &[t(Stopped, 0), t(Starting, 0)], 0),
            Some(1)
        );
        assert_eq!(choose(Warm, 1, &[t(Stopped, 0), t(Stopped, 0)], 0), Some(0));
        assert_eq!(
            choose(Warm, 1, &[t(Stopping, 0), t(Stopped, 0)], 0),
            Some(0)
        );
    }

    #[test]
    fn spillover_uses_the_least_busy_active_target_below_the_limit() {
        // a busy (1 of 2), b cold: stay on a.
        assert_eq!(
            choose(Spillover, 2, &[t(Ready, 1), t(Stopped, 0)], 0),
            Some(0)
        );
        // a at the limit: start the next cold target.
        assert_eq!(
            choose(Spillover, 1, &[t(Ready, 1), t(Stopped, 0)], 0),
            Some(1)
        );
        // Both running, a busier: b.
        assert_eq!(
            choose(Spillover, 2, &[t(Ready, 1), t(Ready, 0)], 0),
            Some(1)
        );
    }

    #[test]
    fn spillover_ties_rotate() {
        let targets = [t(Ready, 0), t(Ready, 0), t(Ready, 0)];
        let picks: Vec<_> = (0..4)
            .map(|rr| choose(Spillover, 1, &targets, rr))
            .collect();
        assert_eq!(picks, vec![Some(0), Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn spillover_with_everything_full_uses_the_least_busy() {
        assert_eq!(
            choose(Spillover, 1, &[t(Ready, 3), t(Starting, 2)], 0),
            Some(1)
        );
    }

    #[test]
    fn spillover_counts_a_target_with_requests_in_flight_as_active() {
        // Stopped but with a request routed to it (its start is under way): active, not cold.
        assert_eq!(
            choose(Spillover, 2, &[t(Stopped, 1), t(Stopped, 0)], 0),
            Some(0)
        );
    }

    #[test]
    fn spillover_skips_stopping_targets_and_fails_when_nothing_is_left() {
        assert_eq!(
            choose(Spillover, 1, &[t(Stopping, 0), t(Stopped, 0)], 0),
            Some(1)
        );
        assert_eq!(
            choose(Spillover, 1, &[t(Stopping, 0), t(Stopping, 0)], 0),
            None
        );
    }

    #[test]
    fn query_model_is_replaced_and_encoded() {
        assert_eq!(
            replace_query_model("a=1&model=x&b=2", "org/m 1"),
            "a=1&model=org/m%201&b=2"
        );
    }
}
