//! The matrix router's swap decision as a pure function: (target, running models, compiled
//! sets, eviction costs) → (set chosen, models to evict, cost).
//!
//! It lives next to the compiled sets it reads (`matrix.rs`) because loading uses it too (a
//! selector's spillover targets must fit in one set); the supervisor reaches it as
//! `supervisor::matrix`.
//!
//! Rules (llama-swap §1.6): a running target changes nothing; otherwise every set whose
//! expression has an alternative containing the target is a candidate, its cost is the sum of
//! the eviction costs of the running models outside that alternative, the cheapest wins and
//! ties go to the set defined first. A model in no set runs alone.
//!
//! The sets are never expanded into their combinations (a few `a | b` terms joined by `&`
//! already make thousands). Each decision projects the expressions onto the only models that
//! matter to it, the target and the running ones, as bitmasks: alternatives that differ only
//! in models not running collapse into one state, and a state that is a subset of another is
//! dropped (keeping more running models is never worse), so the work is bounded by the
//! expression size times a handful of states.

use crate::config::{MatrixConfig, MatrixExpr};

/// What the matrix decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The chosen set's name; `None` when the target is in no set (it runs alone) or is
    /// already running.
    pub set: Option<String>,
    /// Running models to stop, in the order given.
    pub evict: Vec<String>,
    /// The models that run once the swap is done: the running models kept, then the target.
    pub target: Vec<String>,
    /// Sum of the eviction costs of `evict`.
    pub cost: u64,
}

impl Decision {
    /// The log line, in llama-swap's shape.
    pub fn log_line(&self, model: &str, matrix: &MatrixConfig) -> String {
        let dsl = self
            .set
            .as_deref()
            .and_then(|name| matrix.sets.iter().find(|set| set.name == name))
            .map_or("", |set| set.dsl.as_str());
        format!(
            "matrix: model={model} set={} dsl={dsl:?} evict=[{}] target=[{}] cost={}",
            self.set.as_deref().unwrap_or("-"),
            self.evict.join(" "),
            self.target.join(" "),
            self.cost
        )
    }
}

/// A projected state: bit `i` is set when relevant model `i` is in the alternative.
type Mask = u128;

/// The most models one decision can weigh: the target plus 127 running models. Running models
/// beyond that (never seen in practice) are treated as outside every set, so they are evicted.
const MAX_RELEVANT: usize = 128;

/// Chooses the set for `target` given the `running` models (ids; the target may be among
/// them). Pure: no clock, no processes, no I/O.
pub fn solve(target: &str, running: &[&str], matrix: &MatrixConfig) -> Decision {
    let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if running.contains(&target) {
        return Decision {
            set: None,
            evict: Vec::new(),
            target: owned(running),
            cost: 0,
        };
    }
    let alone = || Decision {
        set: None,
        evict: owned(running),
        target: vec![target.to_string()],
        cost: running.iter().map(|m| matrix.cost_of(m)).sum(),
    };
    let Some(target_index) = matrix.index_of(target) else {
        return alone();
    };
    // Relevant models: bit 0 is the target, then each running model the matrix knows.
    let mut bits: Vec<(u32, Mask)> = vec![(target_index, 1)];
    for model in running {
        if let Some(index) = matrix.index_of(model) {
            if bits.len() < MAX_RELEVANT && !bits.iter().any(|(i, _)| *i == index) {
                bits.push((index, 1 << bits.len()));
            }
        }
    }
    let bit_of = |index: u32| -> Mask {
        bits.iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, bit)| *bit)
    };
    let running_costs: Vec<(&str, Mask, u64)> = running
        .iter()
        .map(|model| {
            let bit = matrix.index_of(model).map_or(0, bit_of);
            (*model, bit, matrix.cost_of(model))
        })
        .collect();

    let mut best: Option<(usize, Mask, u64)> = None;
    let mut states = Vec::new();
    for (set_index, set) in matrix.sets.iter().enumerate() {
        if set.support.binary_search(&target_index).is_err() {
            continue;
        }
        states.clear();
        evaluate(&set.expr, &bit_of, &mut states);
        for &state in &states {
            if state & 1 == 0 {
                continue;
            }
            let cost: u64 = running_costs
                .iter()
                .filter(|(_, bit, _)| state & bit == 0)
                .map(|(_, _, cost)| cost)
                .sum();
            // Strictly cheaper only: the earlier set (and state) wins ties.
            if best.is_none_or(|(_, _, best_cost)| cost < best_cost) {
                best = Some((set_index, state, cost));
            }
        }
    }
    let Some((set_index, state, cost)) = best else {
        return alone();
    };
    let mut evict = Vec::new();
    let mut kept = Vec::new();
    for (model, bit, _) in &running_costs {
        if state & bit == 0 {
            evict.push(model.to_string());
        } else {
            kept.push(model.to_string());
        }
    }
    kept.push(target.to_string());
    Decision {
        set: Some(matrix.sets[set_index].name.clone()),
        evict,
        target: kept,
        cost,
    }
}

/// Whether one alternative of one set contains every model in `models` (spillover selectors
/// need their targets to run together).
pub fn can_contain_all(matrix: &MatrixConfig, models: &[&str]) -> bool {
    let mut bits: Vec<(u32, Mask)> = Vec::new();
    for model in models.iter().take(MAX_RELEVANT) {
        let Some(index) = matrix.index_of(model) else {
            return false;
        };
        if !bits.iter().any(|(i, _)| *i == index) {
            bits.push((index, 1 << bits.len()));
        }
    }
    let all: Mask = bits.iter().fold(0, |acc, (_, bit)| acc | bit);
    let bit_of = |index: u32| -> Mask {
        bits.iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, bit)| *bit)
    };
    let mut states = Vec::new();
    matrix.sets.iter().any(|set| {
        states.clear();
        evaluate(&set.expr, &bit_of, &mut states);
        states.iter().any(|state| state & all == all)
    })
}

/// The maximal projected states of `expr`'s alternatives, appended to `out`.
fn evaluate(expr: &MatrixExpr, bit_of: &dyn Fn(u32) -> Mask, out: &mut Vec<Mask>) {
    match expr {
        MatrixExpr::Model(index) => out.push(bit_of(*index)),
        MatrixExpr::Or(items) => {
            let start = out.len();
            for item in items {
                evaluate(item, bit_of, out);
            }
            prune(out, start);
        }
        MatrixExpr::And(items) => {
            let mut acc: Vec<Mask> = vec![0];
            let mut child = Vec::new();
            let mut next = Vec::new();
            for item in items {
                child.clear();
                evaluate(item, bit_of, &mut child);
                next.clear();
                for &left in &acc {
                    for &right in &child {
                        next.push(left | right);
                    }
                }
                prune(&mut next, 0);
                std::mem::swap(&mut acc, &mut next);
            }
            out.extend_from_slice(&acc);
        }
    }
}

/// Removes, from `states[start..]`, duplicates and every state that is a strict subset of
/// another, keeping the first occurrence's order.
fn prune(states: &mut Vec<Mask>, start: usize) {
    let mut kept: Vec<Mask> = Vec::with_capacity(states.len() - start);
    for &state in &states[start..] {
        if kept.iter().any(|&other| state & !other == 0) {
            continue; // A subset of (or equal to) a kept state.
        }
        kept.retain(|&other| other & !state != 0);
        kept.push(state);
    }
    states.truncate(start);
    states.extend_from_slice(&kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix over `models` with sets in the given order; costs default to 1.
    fn matrix(models: &[&str], sets: &[(&str, &str)], costs: &[(&str, u64)]) -> MatrixConfig {
        let mut text = String::from("startPort: 9000\nmodels:\n");
        for model in models {
            text.push_str(&format!("  {model}:\n    cmd: x --port ${{PORT}}\n"));
        }
        text.push_str(
            "routing:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n",
        );
        for (name, dsl) in sets {
            text.push_str(&format!("          {name}: \"{dsl}\"\n"));
        }
        if !costs.is_empty() {
            text.push_str("        evict_costs:\n");
            for (model, cost) in costs {
                text.push_str(&format!("          {model}: {cost}\n"));
            }
        }
        let loaded = crate::config::parse(&text, std::path::Path::new("m.yaml"), &|_| None)
            .unwrap_or_else(|error| panic!("{error}\n{text}"));
        loaded.config.matrix.expect("matrix configured")
    }

    fn decide(
        m: &MatrixConfig,
        target: &str,
        running: &[&str],
    ) -> (Option<String>, Vec<String>, u64) {
        let d = solve(target, running, m);
        (d.set, d.evict, d.cost)
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_running_target_changes_nothing() {
        let m = matrix(&["a", "b"], &[("s1", "a"), ("s2", "b")], &[]);
        assert_eq!(decide(&m, "a", &["a", "b"]), (None, vec![], 0));
    }

    #[test]
    fn models_in_separate_sets_swap() {
        // llama-swap TestMatrix_SwapEvictsConflicting.
        let m = matrix(&["a", "b"], &[("s1", "a"), ("s2", "b")], &[]);
        assert_eq!(decide(&m, "b", &["a"]), (Some("s2".into()), s(&["a"]), 1));
    }

    #[test]
    fn models_in_one_set_coexist_and_only_the_target_starts() {
        // llama-swap TestMatrix_CoexistInSet.
        let m = matrix(&["a", "b", "c"], &[("ab", "a & b")], &[]);
        let d = solve("b", &["a"], &m);
        assert_eq!(d.evict, Vec::<String>::new());
        assert_eq!(d.target, s(&["a", "b"]));
        assert_eq!(d.set.as_deref(), Some("ab"));
    }

    #[test]
    fn a_set_allows_any_subset_of_itself() {
        let m = matrix(&["a", "b", "c"], &[("abc", "a & b & c")], &[]);
        assert_eq!(decide(&m, "c", &[]), (Some("abc".into()), vec![], 0));
        assert_eq!(decide(&m, "c", &["b"]), (Some("abc".into()), vec![], 0));
    }

    #[test]
    fn a_model_in_no_set_runs_alone() {
        let m = matrix(&["a", "b", "lonely"], &[("ab", "a & b")], &[]);
        // Loading it evicts everything...
        assert_eq!(decide(&m, "lonely", &["a", "b"]), (None, s(&["a", "b"]), 2));
        // ...and loading anything else evicts it.
        assert_eq!(
            decide(&m, "a", &["lonely"]),
            (Some("ab".into()), s(&["lonely"]), 1)
        );
    }

    #[test]
    fn ties_go_to_the_set_defined_first() {
        // llama-swap TestMatrixSolver_TieBreakDefinitionOrder; names sort the other way, so a
        // name-sorted loader would pick differently.
        let m = matrix(
            &["a", "b", "c"],
            &[("z_first", "a & b"), ("a_second", "a & c")],
            &[],
        );
        let d = solve("a", &["b", "c"], &m);
        assert_eq!(d.set.as_deref(), Some("z_first"));
        assert_eq!(d.evict, s(&["c"]));
        let m = matrix(
            &["a", "b", "c"],
            &[("a_second", "a & c"), ("z_first", "a & b")],
            &[],
        );
        assert_eq!(solve("a", &["b", "c"], &m).evict, s(&["b"]));
    }

    #[test]
    fn evict_costs_steer_the_choice() {
        // llama-swap TestMatrixSolver_EvictCostsPreferred: b is expensive to evict.
        let m = matrix(
            &["a", "b", "c"],
            &[("a_with_c", "a & c"), ("a_with_b", "a & b")],
            &[("b", 10)],
        );
        assert_eq!(
            decide(&m, "a", &["b", "c"]),
            (Some("a_with_b".into()), s(&["c"]), 1)
        );
    }

    #[test]
    fn vars_name_models_and_carry_costs() {
        let text = "startPort: 9000\nmodels:\n  gemma-3-27b:\n    cmd: x --port ${PORT}\n  qwen:\n    cmd: x --port ${PORT}\n  v:\n    cmd: x --port ${PORT}\n\
routing:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        vars: {g: gemma-3-27b, q: qwen}\n        evict_costs: {g: 50}\n        sets:\n          s1: \"(g | q) & v\"\n          s2: \"q\"\n";
        let m = crate::config::parse(text, std::path::Path::new("m.yaml"), &|_| None)
            .expect("valid")
            .config
            .matrix
            .expect("matrix");
        assert_eq!(m.cost_of("gemma-3-27b"), 50);
        // q with g and v running: s1 keeps v (evicts g, cost 50); s2 evicts both (51).
        assert_eq!(
            decide(&m, "qwen", &["gemma-3-27b", "v"]),
            (Some("s1".into()), s(&["gemma-3-27b"]), 50)
        );
    }

    #[test]
    fn alternatives_inside_a_set_pick_the_cheapest() {
        let m = matrix(
            &["a", "b", "c", "d"],
            &[("s", "a & (b | c) & (c | d)")],
            &[],
        );
        // With b and d running, the alternatives {a,b,c}, {a,b,d}, {a,c}, {a,c,d}: {a,b,d}
        // keeps both.
        assert_eq!(decide(&m, "a", &["b", "d"]), (Some("s".into()), vec![], 0));
        // b and c running: {a,b,c} keeps both.
        assert_eq!(decide(&m, "a", &["b", "c"]), (Some("s".into()), vec![], 0));
    }

    #[test]
    fn references_inline_other_sets() {
        let m = matrix(
            &["a", "b", "e"],
            &[("base", "a | b"), ("more", "+base & e")],
            &[],
        );
        assert_eq!(decide(&m, "e", &["b"]), (Some("more".into()), vec![], 0));
        assert_eq!(decide(&m, "a", &["b"]), (Some("base".into()), s(&["b"]), 1));
    }

    #[test]
    fn overlapping_alternatives_are_not_double_counted() {
        // (a | b) & (a | c): the alternative {t, a} must not count a twice, so it is no
        // better than {t, a, b} or {t, b, c}; every best choice evicts one model.
        let m = matrix(
            &["a", "b", "c", "t"],
            &[("s", "t & (a | b) & (a | c)")],
            &[("b", 5)],
        );
        // b is expensive: keep it; {t,a,b} or {t,b,c} evict one cheap model.
        let d = solve("t", &["a", "b", "c"], &m);
        assert_eq!(d.cost, 1);
        assert_eq!(d.evict.len(), 1);
        assert!(!d.evict.contains(&"b".to_string()));
        // Only a running: {t, a} keeps it at no cost.
        assert_eq!(decide(&m, "t", &["a"]), (Some("s".into()), vec![], 0));
    }

    #[test]
    fn unknown_target_runs_alone() {
        let m = matrix(&["a"], &[("s", "a")], &[]);
        assert_eq!(decide(&m, "zzz", &["a"]), (None, s(&["a"]), 1));
    }

    #[test]
    fn prune_keeps_only_maximal_states() {
        let mut states = vec![0b001, 0b011, 0b010, 0b100, 0b011];
        prune(&mut states, 0);
        assert_eq!(states, vec![0b011, 0b100]);
    }

    #[test]
    fn log_line_has_llama_swaps_shape() {
        let m = matrix(&["a", "b"], &[("s1", "a"), ("s2", "b")], &[]);
        let d = solve("b", &["a"], &m);
        assert_eq!(
            d.log_line("b", &m),
            "matrix: model=b set=s2 dsl=\"b\" evict=[a] target=[b] cost=1"
        );
    }

    #[test]
    fn many_sets_and_models_decide_without_expanding() {
        // 40 models, 30 sets, each set a product of 4 choices of 4 (256 alternatives each).
        let models: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = models.iter().map(String::as_str).collect();
        let dsls: Vec<(String, String)> = (0..30)
            .map(|s| {
                let terms: Vec<String> = (0..4)
                    .map(|t| {
                        let options: Vec<String> = (0..4)
                            .map(|o| format!("m{}", (s + t * 7 + o * 3) % 40))
                            .collect();
                        format!("({})", options.join(" | "))
                    })
                    .collect();
                (format!("set{s}"), terms.join(" & "))
            })
            .collect();
        let sets: Vec<(&str, &str)> = dsls.iter().map(|(n, d)| (n.as_str(), d.as_str())).collect();
        let m = matrix(&refs, &sets, &[("m8", 3)]);
        // The symbolic answer equals the brute-force one over all 7,680 expansions.
        for (target, running) in [
            ("m5", vec!["m1", "m8", "m20"]),
            ("m0", vec!["m3", "m9", "m12", "m33"]),
            ("m39", vec![]),
            ("m17", vec!["m2", "m4", "m6", "m8", "m10", "m30"]),
        ] {
            let d = solve(target, &running, &m);
            assert_eq!(
                d.cost,
                brute_force_cost(&m, target, &running),
                "{target} {running:?}"
            );
            let evicted: u64 = d.evict.iter().map(|e| m.cost_of(e)).sum();
            assert_eq!(evicted, d.cost);
        }
    }

    /// Every alternative of an expression, as sorted model indices (test oracle only).
    fn expand(expr: &MatrixExpr) -> Vec<Vec<u32>> {
        match expr {
            MatrixExpr::Model(i) => vec![vec![*i]],
            MatrixExpr::Or(items) => items.iter().flat_map(|i| expand(i)).collect(),
            MatrixExpr::And(items) => items.iter().fold(vec![vec![]], |acc, item| {
                let options = expand(item);
                acc.iter()
                    .flat_map(|a| {
                        options.iter().map(move |o| {
                            let mut u = a.clone();
                            u.extend(o);
                            u.sort_unstable();
                            u.dedup();
                            u
                        })
                    })
                    .collect()
            }),
        }
    }

    fn brute_force_cost(m: &MatrixConfig, target: &str, running: &[&str]) -> u64 {
        let t = m.index_of(target).expect("known");
        let mut best: Option<u64> = None;
        for set in &m.sets {
            for alt in expand(&set.expr) {
                if !alt.contains(&t) {
                    continue;
                }
                let cost = running
                    .iter()
                    .filter(|r| !alt.contains(&m.index_of(r).expect("known")))
                    .map(|r| m.cost_of(r))
                    .sum();
                best = Some(best.map_or(cost, |b: u64| b.min(cost)));
            }
        }
        best.unwrap_or_else(|| running.iter().map(|r| m.cost_of(r)).sum())
    }
}
