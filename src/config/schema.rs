//! The keys swapd knows at each level of `config.yaml`, and warnings for the ones it does not.
//!
//! llama-swap silently ignores unknown keys, so a typo such as `ttll: 60` just loses the
//! setting. swapd loads such a file too (configs must stay portable) but warns, naming the
//! line and suggesting the closest valid key.

use serde_yaml::Mapping;

use super::error::{KeyPath, Reporter};

pub(crate) const TOP_LEVEL: &[&str] = &[
    "healthCheckTimeout",
    "logLevel",
    "logTimeFormat",
    "logToStdout",
    "logRequests",
    "metricsMaxInMemory",
    "captureBuffer",
    "store",
    "ui",
    "performance",
    "startPort",
    "sendLoadingState",
    "includeAliasesInList",
    "globalTTL",
    "unloadTimeout",
    "macros",
    "apiKeys",
    "models",
    "profiles",
    "selectors",
    "routing",
    "groups",
    "matrix",
    "hooks",
    "peers",
    "upstream",
    "swapd",
];

pub(crate) const MODEL: &[&str] = &[
    "cmd",
    "cmdStop",
    "proxy",
    "aliases",
    "env",
    "checkEndpoint",
    "ttl",
    "unloadTimeout",
    "unlisted",
    "useModelName",
    "name",
    "description",
    "concurrencyLimit",
    "filters",
    "macros",
    "metadata",
    "sendLoadingState",
    "timeouts",
    "compat",
    "capabilities",
    "swapd",
];

/// swapd-only settings of one model (`models.<id>.swapd`).
pub(crate) const MODEL_SWAPD: &[&str] = &["memory"];

pub(crate) const FILTERS: &[&str] = &[
    "stripParams",
    "strip_params",
    "setParams",
    "setParamsByID",
    "setParamsByMatch",
];

pub(crate) const UPSTREAM: &[&str] = &["ignorePaths"];

pub(crate) const COMPAT: &[&str] = &["ignoreWebsockets"];

pub(crate) const CAPABILITIES: &[&str] = &["in", "out", "tools", "reranker", "context"];

pub(crate) const ALIAS: &[&str] = &["id", "name", "unlisted"];

pub(crate) const GROUP: &[&str] = &["swap", "exclusive", "persistent", "members"];

pub(crate) const MATRIX: &[&str] = &["vars", "evict_costs", "sets"];

pub(crate) const ROUTING: &[&str] = &["router", "scheduler"];
pub(crate) const ROUTER: &[&str] = &["use", "settings"];
pub(crate) const ROUTER_SETTINGS: &[&str] = &["groups", "matrix"];
pub(crate) const SCHEDULER: &[&str] = &["use", "settings"];
pub(crate) const SCHEDULER_SETTINGS: &[&str] = &["fifo"];
pub(crate) const FIFO: &[&str] = &["priority"];

pub(crate) const HOOKS: &[&str] = &["on_startup"];
pub(crate) const ON_STARTUP: &[&str] = &["preload"];

pub(crate) const SWAPD: &[&str] = &[
    "logBufferBytes",
    "maxBodyBytes",
    "headerTimeout",
    "maxConnections",
    "upstreamTimeout",
    "shutdownTimeout",
    "logFormat",
    "allowedOrigins",
    "allowedHosts",
    "memory",
];

/// Warns about every key of `mapping` that is not in `known`.
///
/// Keys starting with `x-` are left alone: like docker-compose extension fields, they are a
/// conventional home for YAML anchors that other settings merge in.
pub(crate) fn check_keys(
    mapping: &Mapping,
    path: &KeyPath,
    known: &[&str],
    reporter: &mut Reporter<'_>,
) {
    for key in mapping.keys() {
        let key = key.as_str().unwrap_or_default();
        if known.contains(&key) || key.starts_with("x-") || key == "<<" {
            continue;
        }
        let message = match suggest(key, known) {
            Some(suggestion) => format!("unknown key; did you mean '{suggestion}'?"),
            None => "unknown key".to_string(),
        };
        reporter.warn(&path.key(key), message);
    }
}

/// The known key closest to `key` by edit distance, if it is close enough to be a typo.
pub(crate) fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lowered = key.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in known {
        let distance = edit_distance(&lowered, &candidate.to_lowercase());
        let limit = (candidate.chars().count() / 3).max(2);
        if distance <= limit && best.is_none_or(|(best_distance, _)| distance < best_distance) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Levenshtein distance between two strings, counted in characters.
fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (row, left_char) in left.chars().enumerate() {
        let mut current = vec![row + 1; right.len() + 1];
        for (column, right_char) in right.iter().enumerate() {
            let substitution = previous[column] + usize::from(left_char != *right_char);
            current[column + 1] = substitution
                .min(previous[column + 1] + 1)
                .min(current[column] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("ttl", "ttll"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions_pick_the_closest_plausible_key() {
        assert_eq!(suggest("ttll", MODEL), Some("ttl"));
        assert_eq!(suggest("cmd_stop", MODEL), Some("cmdStop"));
        assert_eq!(suggest("checkendpoint", MODEL), Some("checkEndpoint"));
        assert_eq!(
            suggest("healthcheckTimeOut", TOP_LEVEL),
            Some("healthCheckTimeout")
        );
        assert_eq!(suggest("completely-different", MODEL), None);
        assert_eq!(suggest("foo", MODEL), None);
    }
}
