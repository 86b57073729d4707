//! Swap planning: which running models must stop so that a target model may run.
//!
//! This is llama-swap's group rule as a pure function, so every rule and corner case is a table
//! test with literals, and the dispatch to the matrix router (`super::matrix`) when the config
//! uses it. The supervisor calls it; it never looks at processes or time.

use crate::config::{Config, GroupConfig};

use super::matrix;

/// The swap decision for one target: what to stop, and the matrix's reasoning when the matrix
/// router made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapPlan {
    pub evict: Vec<String>,
    pub matrix: Option<matrix::Decision>,
}

/// Plans the start of `target` with the router the config selects. `running` may come in any
/// order; the matrix sees it sorted, so its decisions and logs are deterministic.
pub fn plan(target: &str, running: &[&str], config: &Config) -> SwapPlan {
    match &config.matrix {
        Some(sets) => {
            let mut sorted = running.to_vec();
            sorted.sort_unstable();
            let decision = matrix::solve(target, &sorted, sets);
            SwapPlan {
                evict: decision.evict.clone(),
                matrix: Some(decision),
            }
        }
        None => SwapPlan {
            evict: evictions(target, running, &config.groups)
                .into_iter()
                .map(str::to_string)
                .collect(),
            matrix: None,
        },
    }
}

/// Logs and counts the matrix decisions the supervisor acts on, once per swap: a swap is
/// planned again when its evicted models have stopped, and that second, eviction-free plan
/// is the same decision.
#[derive(Debug, Default)]
pub struct DecisionLog {
    swapped_for: Option<String>,
}

impl DecisionLog {
    /// Called when the supervisor starts `target` (`plan.evict` empty) or begins the swap.
    pub fn note(
        &mut self,
        target: &str,
        plan: &SwapPlan,
        config: &Config,
        metrics: &crate::metrics::Metrics,
    ) {
        let (Some(decision), Some(sets)) = (&plan.matrix, &config.matrix) else {
            return;
        };
        if plan.evict.is_empty() && self.swapped_for.take().as_deref() == Some(target) {
            return;
        }
        if !plan.evict.is_empty() {
            self.swapped_for = Some(target.to_string());
        }
        log::info!("{}", decision.log_line(target, sets));
        metrics.record_matrix_decision();
    }
}

/// The models in `running` that must be stopped before `target` may start.
///
/// Rules (llama-swap §1.5): with the target in group G, a running model M is evicted when
/// M is in G and G swaps, or M is in another group H while G is exclusive and H is not
/// persistent. Loading from a non-exclusive group never unloads other groups, even exclusive
/// ones (kept for compatibility, llama-swap #215/#315). A model in no group is treated as a
/// group of its own with the default settings (swap and exclusive), which only happens when a
/// caller passes a model the config does not know.
pub fn evictions<'a>(target: &str, running: &[&'a str], groups: &[GroupConfig]) -> Vec<&'a str> {
    let group_of = |model: &str| groups.iter().find(|g| g.members.iter().any(|m| m == model));
    let target_group = group_of(target);
    let (swap, exclusive) = target_group.map_or((true, true), |g| (g.swap, g.exclusive));
    running
        .iter()
        .copied()
        .filter(|&model| model != target)
        .filter(|&model| {
            let other_group = group_of(model);
            let same_group = match (target_group, other_group) {
                (Some(a), Some(b)) => a.id == b.id,
                _ => false,
            };
            if same_group {
                swap
            } else {
                let persistent = other_group.is_some_and(|g| g.persistent);
                exclusive && !persistent
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(
        id: &str,
        swap: bool,
        exclusive: bool,
        persistent: bool,
        members: &[&str],
    ) -> GroupConfig {
        GroupConfig {
            id: id.to_string(),
            swap,
            exclusive,
            persistent,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn default_group_runs_one_model_at_a_time() {
        let groups = [group("(default)", true, true, false, &["a", "b", "c"])];
        assert_eq!(evictions("b", &["a"], &groups), vec!["a"]);
        assert_eq!(evictions("a", &["a"], &groups), Vec::<&str>::new());
        assert_eq!(evictions("c", &[], &groups), Vec::<&str>::new());
    }

    #[test]
    fn non_swapping_group_members_coreside() {
        let groups = [group("pair", false, true, false, &["a", "b"])];
        assert_eq!(evictions("b", &["a"], &groups), Vec::<&str>::new());
    }

    #[test]
    fn exclusive_group_evicts_other_groups() {
        let groups = [
            group("g1", true, true, false, &["a"]),
            group("g2", false, false, false, &["x", "y"]),
        ];
        assert_eq!(evictions("a", &["x", "y"], &groups), vec!["x", "y"]);
    }

    #[test]
    fn persistent_group_survives_other_groups_loads() {
        let groups = [
            group("g1", true, true, false, &["a", "b"]),
            group("keep", false, false, true, &["embed"]),
        ];
        assert_eq!(evictions("b", &["a", "embed"], &groups), vec!["a"]);
    }

    #[test]
    fn persistent_group_still_swaps_within_itself() {
        let groups = [group("keep", true, false, true, &["e1", "e2"])];
        assert_eq!(evictions("e2", &["e1"], &groups), vec!["e1"]);
    }

    #[test]
    fn non_exclusive_group_does_not_unload_exclusive_groups() {
        // llama-swap's TestGroup_NonExclusiveDoesNotUnloadExclusive: the one-way gotcha.
        let groups = [
            group("exclusive", true, true, false, &["a"]),
            group("shared", true, false, false, &["x"]),
        ];
        assert_eq!(evictions("x", &["a"], &groups), Vec::<&str>::new());
        // The other direction evicts.
        assert_eq!(evictions("a", &["x"], &groups), vec!["x"]);
    }

    #[test]
    fn swapping_non_exclusive_group_swaps_only_its_own_members() {
        let groups = [
            group("g1", true, false, false, &["a", "b"]),
            group("g2", true, true, false, &["c"]),
        ];
        assert_eq!(evictions("b", &["a", "c"], &groups), vec!["a"]);
    }

    #[test]
    fn unknown_models_behave_like_the_default_group() {
        assert_eq!(evictions("z", &["a"], &[]), vec!["a"]);
    }
}
