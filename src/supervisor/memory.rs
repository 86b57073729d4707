//! Memory-aware admission: whether a model may start now, which idle models must stop first,
//! or whether its request must wait or be refused, given the footprints of what runs.
//!
//! This is a pure function of (target and its footprint, running models with footprints,
//! idleness and last use, budgets, groups), so every rule is a table test with literals. The
//! supervisor calls it instead of `plan::evictions` alone when `swapd.memory` is configured;
//! it never looks at processes, clocks or files. Group rules stay on top (`plan.rs`), except
//! that models in no group no longer swap each other: they co-reside while they fit.

use std::time::Instant;

use crate::config::{human_bytes, GroupConfig, DEFAULT_GROUP_ID};

use super::plan;

/// Bytes per kind; `None` means unknown (never measured and not declared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    pub ram: Option<u64>,
    pub gpu: Option<u64>,
}

impl Footprint {
    pub const UNKNOWN: Footprint = Footprint {
        ram: None,
        gpu: None,
    };

    pub fn known(ram: u64, gpu: u64) -> Footprint {
        Footprint {
            ram: Some(ram),
            gpu: Some(gpu),
        }
    }

    /// The larger value of each kind; known beats unknown.
    pub fn max(self, other: Footprint) -> Footprint {
        let pick = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Footprint {
            ram: pick(self.ram, other.ram),
            gpu: pick(self.gpu, other.gpu),
        }
    }

    fn get(self, kind: Kind) -> Option<u64> {
        match kind {
            Kind::Ram => self.ram,
            Kind::Gpu => self.gpu,
        }
    }
}

/// The budgets in bytes; a kind without a budget is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budgets {
    pub ram: Option<u64>,
    pub gpu: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ram,
    Gpu,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ram => "ram",
            Kind::Gpu => "gpu",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Ram => "RAM",
            Kind::Gpu => "GPU memory",
        }
    }
}

impl Budgets {
    fn kinds(self) -> impl Iterator<Item = (Kind, u64)> {
        [(Kind::Ram, self.ram), (Kind::Gpu, self.gpu)]
            .into_iter()
            .filter_map(|(kind, budget)| budget.map(|b| (kind, b)))
    }
}

/// A model that is starting, ready or stopping, as the decision sees it.
#[derive(Debug, Clone)]
pub struct Resident<'a> {
    pub id: &'a str,
    /// Its recorded footprint (declared, learned or observed, the largest). An unknown kind
    /// counts as the whole budget: nothing is known to fit next to it.
    pub footprint: Footprint,
    /// Ready with nothing in flight and nobody waiting: it may be stopped.
    pub idle: bool,
    pub last_used: Instant,
}

/// What to do with the request at the head of the queue for a stopped model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stop these idle models (by group rules, then for memory, LRU first), then start the
    /// target; with both lists empty, start it now.
    Start {
        swap: Vec<String>,
        memory: Vec<String>,
    },
    /// Keep the request queued; `for_memory` says memory (not a group swap) is what it waits for.
    Wait { for_memory: bool },
    /// The model can never fit: answer 503 with this message.
    Reject(String),
}

/// Decides whether `target` (with `footprint`) may start next to `running`.
///
/// Rules, in order:
/// 1. A known footprint larger than a whole budget is refused at once.
/// 2. Group rules (`plan::evictions`) still apply, except that the implicit default group
///    (models in no group) neither swaps nor is exclusive. If a model they evict is busy, wait.
/// 3. A target with an unknown footprint may only start alone: every other model is evicted
///    (models of persistent groups excepted); if one is busy, wait.
/// 4. Otherwise the footprints of what stays plus the target must fit every budget: idle
///    models are evicted least recently used first (never one of another persistent group)
///    until it fits. If even evicting every idle model would not make it fit, wait without
///    evicting anything, until busy models drain.
pub fn decide(
    target: &str,
    footprint: Footprint,
    running: &[Resident<'_>],
    budgets: Budgets,
    groups: &[GroupConfig],
) -> Decision {
    decide_with_router(target, footprint, running, budgets, groups, None)
}

/// [`decide`] when the matrix router is in use: `router_evict` (its solution for the target)
/// replaces the group rules of step 2, and memory rules apply on top of it as they do on top
/// of groups.
pub fn decide_with_router(
    target: &str,
    footprint: Footprint,
    running: &[Resident<'_>],
    budgets: Budgets,
    groups: &[GroupConfig],
    router_evict: Option<&[String]>,
) -> Decision {
    if let Some(message) = too_large(target, footprint, budgets) {
        return Decision::Reject(message);
    }
    let groups = memory_groups(groups);
    let others: Vec<&Resident<'_>> = running.iter().filter(|r| r.id != target).collect();
    let ids: Vec<&str> = others.iter().map(|r| r.id).collect();
    let swap: Vec<String> = match router_evict {
        Some(evict) => evict.to_vec(),
        None => plan::evictions(target, &ids, &groups)
            .into_iter()
            .map(str::to_string)
            .collect(),
    };
    if others
        .iter()
        .any(|r| swap.iter().any(|s| s == r.id) && !r.idle)
    {
        return Decision::Wait { for_memory: false };
    }
    let group_of = |model: &str| {
        groups
            .iter()
            .find(|g| g.members.iter().any(|m| m == model))
            .map(|g| g.id.as_str())
    };
    let target_group = group_of(target);
    let pinned = |model: &str| {
        groups
            .iter()
            .find(|g| g.members.iter().any(|m| m == model))
            .is_some_and(|g| g.persistent && Some(g.id.as_str()) != target_group)
    };
    let mut staying: Vec<&Resident<'_>> = others
        .into_iter()
        .filter(|r| !swap.iter().any(|s| s == r.id))
        .collect();
    let unknown = budgets
        .kinds()
        .any(|(kind, _)| footprint.get(kind).is_none());
    if unknown && budgets.kinds().next().is_some() {
        if staying.iter().any(|r| !pinned(r.id) && !r.idle) {
            return Decision::Wait { for_memory: true };
        }
        let memory = staying
            .iter()
            .filter(|r| !pinned(r.id))
            .map(|r| r.id.to_string())
            .collect();
        return Decision::Start { swap, memory };
    }
    let fits = |staying: &[&Resident<'_>]| {
        budgets.kinds().all(|(kind, budget)| {
            let used: u64 = staying
                .iter()
                .map(|r| r.footprint.get(kind).unwrap_or(budget))
                .fold(0u64, u64::saturating_add);
            used.saturating_add(footprint.get(kind).unwrap_or(0)) <= budget
        })
    };
    let mut candidates: Vec<&Resident<'_>> = staying
        .iter()
        .copied()
        .filter(|r| r.idle && !pinned(r.id))
        .collect();
    candidates.sort_by_key(|r| r.last_used);
    let mut memory = Vec::new();
    for candidate in candidates {
        if fits(&staying) {
            break;
        }
        staying.retain(|r| r.id != candidate.id);
        memory.push(candidate.id.to_string());
    }
    if fits(&staying) {
        Decision::Start { swap, memory }
    } else {
        Decision::Wait { for_memory: true }
    }
}

/// The 503 message for a target whose known footprint exceeds a whole budget, if it does.
pub fn too_large(target: &str, footprint: Footprint, budgets: Budgets) -> Option<String> {
    budgets.kinds().find_map(|(kind, budget)| {
        let needed = footprint.get(kind)?;
        (needed > budget).then(|| {
            format!(
                "model '{target}' needs {} of {} but the whole {} budget is {}",
                human_bytes(needed),
                kind.label(),
                kind.label(),
                human_bytes(budget)
            )
        })
    })
}

/// Which idle model to evict because the observed total exceeds a budget by more than
/// `reserve` (models grew after they started): the least recently used idle one, never one of
/// a persistent group. `None` when everything fits or nothing may be evicted.
pub fn over_budget<'a>(
    running: &[Resident<'a>],
    budgets: Budgets,
    reserve: u64,
    groups: &[GroupConfig],
) -> Option<(&'a str, Kind, u64)> {
    let persistent = |model: &str| {
        groups
            .iter()
            .any(|g| g.persistent && g.members.iter().any(|m| m == model))
    };
    for (kind, budget) in budgets.kinds() {
        let used: u64 = running
            .iter()
            .map(|r| r.footprint.get(kind).unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        if used > budget.saturating_add(reserve) {
            return running
                .iter()
                .filter(|r| r.idle && !persistent(r.id))
                .min_by_key(|r| r.last_used)
                .map(|r| (r.id, kind, used));
        }
    }
    None
}

/// The groups as memory-aware scheduling applies them: the implicit default group (models in
/// no group) neither swaps its members nor is exclusive, so they co-reside while they fit.
fn memory_groups(groups: &[GroupConfig]) -> Vec<GroupConfig> {
    groups
        .iter()
        .map(|g| {
            if g.id == DEFAULT_GROUP_ID {
                GroupConfig {
                    swap: false,
                    exclusive: false,
                    persistent: false,
                    ..g.clone()
                }
            } else {
                g.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GIB: u64 = 1 << 30;

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

    /// A resident using `ram` GiB, idle or busy, last used `age` seconds before `base`.
    fn resident(id: &str, ram: Option<u64>, idle: bool, age: u64, base: Instant) -> Resident<'_> {
        Resident {
            id,
            footprint: Footprint {
                ram: ram.map(|g| g * GIB),
                gpu: None,
            },
            idle,
            last_used: base + Duration::from_secs(1000 - age),
        }
    }

    fn ram(gib: u64) -> Footprint {
        Footprint {
            ram: Some(gib * GIB),
            gpu: None,
        }
    }

    fn ram_budget(gib: u64) -> Budgets {
        Budgets {
            ram: Some(gib * GIB),
            gpu: None,
        }
    }

    fn start(swap: &[&str], memory: &[&str]) -> Decision {
        Decision::Start {
            swap: swap.iter().map(|s| s.to_string()).collect(),
            memory: memory.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn default_group(members: &[&str]) -> Vec<GroupConfig> {
        vec![group(DEFAULT_GROUP_ID, true, true, false, members)]
    }

    #[test]
    fn ungrouped_models_coreside_while_they_fit() {
        let t = Instant::now();
        let groups = default_group(&["a", "b", "c"]);
        let running = [resident("a", Some(10), true, 5, t)];
        assert_eq!(
            decide("b", ram(10), &running, ram_budget(24), &groups),
            start(&[], &[])
        );
        assert_eq!(
            decide("b", ram(14), &running, ram_budget(24), &groups),
            start(&[], &[])
        );
        assert_eq!(
            decide("a", ram(10), &[], ram_budget(24), &groups),
            start(&[], &[])
        );
    }

    #[test]
    fn idle_models_are_evicted_least_recently_used_first_until_it_fits() {
        let t = Instant::now();
        let groups = default_group(&["a", "b", "c", "d"]);
        let running = [
            resident("a", Some(8), true, 10, t),
            resident("b", Some(8), true, 30, t),
            resident("c", Some(8), true, 20, t),
        ];
        // 24 used of 30; 10 more needs 4 freed: one eviction, the oldest (b).
        assert_eq!(
            decide("d", ram(10), &running, ram_budget(30), &groups),
            start(&[], &["b"])
        );
        // 20 more needs 14 freed: b then c.
        assert_eq!(
            decide("d", ram(20), &running, ram_budget(30), &groups),
            start(&[], &["b", "c"])
        );
    }

    #[test]
    fn busy_models_are_never_evicted_and_the_newcomer_waits() {
        let t = Instant::now();
        let groups = default_group(&["a", "b", "c"]);
        // The LRU model is busy: the idle one goes instead.
        let running = [
            resident("a", Some(10), false, 50, t),
            resident("b", Some(10), true, 5, t),
        ];
        assert_eq!(
            decide("c", ram(10), &running, ram_budget(24), &groups),
            start(&[], &["b"])
        );
        // Even evicting every idle model does not make room: wait, and evict nothing yet.
        let running = [
            resident("a", Some(10), false, 50, t),
            resident("b", Some(10), true, 5, t),
        ];
        assert_eq!(
            decide("c", ram(15), &running, ram_budget(24), &groups),
            Decision::Wait { for_memory: true }
        );
        // Once the busy one drained (idle now), both go.
        let running = [
            resident("a", Some(10), true, 50, t),
            resident("b", Some(10), true, 5, t),
        ];
        assert_eq!(
            decide("c", ram(15), &running, ram_budget(24), &groups),
            start(&[], &["a", "b"])
        );
    }

    #[test]
    fn larger_than_the_whole_budget_is_rejected_at_once() {
        let t = Instant::now();
        let running = [resident("a", Some(1), false, 1, t)];
        let Decision::Reject(message) = decide("big", ram(30), &running, ram_budget(24), &[])
        else {
            panic!("expected a rejection");
        };
        assert!(message.contains("'big'"), "{message}");
        assert!(message.contains("30.0 GiB"), "{message}");
        assert!(message.contains("24.0 GiB"), "{message}");
        let gpu = Footprint {
            ram: Some(GIB),
            gpu: Some(30 * GIB),
        };
        let budgets = Budgets {
            ram: Some(48 * GIB),
            gpu: Some(23 * GIB),
        };
        let Decision::Reject(message) = decide("big", gpu, &[], budgets, &[]) else {
            panic!("expected a rejection");
        };
        assert!(message.contains("GPU memory"), "{message}");
    }

    #[test]
    fn unknown_footprint_starts_only_alone() {
        let t = Instant::now();
        let groups = default_group(&["a", "b", "new"]);
        let idle = [
            resident("a", Some(1), true, 5, t),
            resident("b", Some(1), true, 9, t),
        ];
        assert_eq!(
            decide("new", Footprint::UNKNOWN, &idle, ram_budget(24), &groups),
            start(&[], &["a", "b"])
        );
        let busy = [
            resident("a", Some(1), false, 5, t),
            resident("b", Some(1), true, 9, t),
        ];
        assert_eq!(
            decide("new", Footprint::UNKNOWN, &busy, ram_budget(24), &groups),
            Decision::Wait { for_memory: true }
        );
        assert_eq!(
            decide("new", Footprint::UNKNOWN, &[], ram_budget(24), &groups),
            start(&[], &[])
        );
        // Known RAM but an unknown GPU footprint under a GPU budget is unknown too.
        let budgets = Budgets {
            ram: Some(24 * GIB),
            gpu: Some(20 * GIB),
        };
        assert_eq!(
            decide("new", ram(1), &idle, budgets, &groups),
            start(&[], &["a", "b"])
        );
    }

    #[test]
    fn an_unmeasured_resident_counts_as_the_whole_budget() {
        let t = Instant::now();
        let groups = default_group(&["a", "b"]);
        let running = [resident("a", None, true, 5, t)];
        assert_eq!(
            decide("b", ram(1), &running, ram_budget(24), &groups),
            start(&[], &["a"])
        );
        let running = [resident("a", None, false, 5, t)];
        assert_eq!(
            decide("b", ram(1), &running, ram_budget(24), &groups),
            Decision::Wait { for_memory: true }
        );
    }

    #[test]
    fn both_budgets_must_fit() {
        let t = Instant::now();
        let groups = default_group(&["a", "b", "c"]);
        let running = [
            Resident {
                id: "a",
                footprint: Footprint::known(2 * GIB, 12 * GIB),
                idle: true,
                last_used: t,
            },
            Resident {
                id: "b",
                footprint: Footprint::known(20 * GIB, GIB),
                idle: true,
                last_used: t + Duration::from_secs(1),
            },
        ];
        let budgets = Budgets {
            ram: Some(32 * GIB),
            gpu: Some(23 * GIB),
        };
        // RAM fits (22 + 2), GPU does not (13 + 11): a (the LRU) goes, and that is enough.
        assert_eq!(
            decide(
                "c",
                Footprint::known(2 * GIB, 11 * GIB),
                &running,
                budgets,
                &groups
            ),
            start(&[], &["a"])
        );
        // GPU fits, RAM does not (22 + 13 > 32): a goes first (LRU) but frees only 2, so b too.
        assert_eq!(
            decide(
                "c",
                Footprint::known(13 * GIB, GIB),
                &running,
                budgets,
                &groups
            ),
            start(&[], &["a", "b"])
        );
    }

    #[test]
    fn a_swapping_group_still_swaps_its_members_even_when_they_fit() {
        let t = Instant::now();
        let groups = vec![
            group("big", true, false, false, &["x", "y"]),
            group(DEFAULT_GROUP_ID, true, true, false, &["a"]),
        ];
        let running = [
            resident("x", Some(1), true, 5, t),
            resident("a", Some(1), true, 5, t),
        ];
        assert_eq!(
            decide("y", ram(1), &running, ram_budget(24), &groups),
            start(&["x"], &[])
        );
        // A busy group member makes the swap wait, and that wait is not for memory.
        let running = [resident("x", Some(1), false, 5, t)];
        assert_eq!(
            decide("y", ram(1), &running, ram_budget(24), &groups),
            Decision::Wait { for_memory: false }
        );
    }

    #[test]
    fn an_exclusive_group_evicts_ungrouped_models_too() {
        let t = Instant::now();
        let groups = vec![
            group("solo", true, true, false, &["s"]),
            group(DEFAULT_GROUP_ID, true, true, false, &["a", "b"]),
        ];
        let running = [
            resident("a", Some(1), true, 5, t),
            resident("b", Some(1), true, 9, t),
        ];
        assert_eq!(
            decide("s", ram(1), &running, ram_budget(24), &groups),
            start(&["a", "b"], &[])
        );
        // Loading an ungrouped model does not evict the exclusive group's model while it fits.
        let running = [resident("s", Some(1), true, 5, t)];
        assert_eq!(
            decide("a", ram(1), &running, ram_budget(24), &groups),
            start(&[], &[])
        );
        // But memory still evicts it when needed.
        assert_eq!(
            decide("a", ram(24), &running, ram_budget(24), &groups),
            start(&[], &["s"])
        );
    }

    #[test]
    fn persistent_groups_are_never_evicted_for_memory() {
        let t = Instant::now();
        let groups = vec![
            group("keep", false, false, true, &["embed"]),
            group(DEFAULT_GROUP_ID, true, true, false, &["a", "b"]),
        ];
        // embed is the LRU but persistent: a goes instead.
        let running = [
            resident("embed", Some(4), true, 99, t),
            resident("a", Some(10), true, 5, t),
        ];
        assert_eq!(
            decide("b", ram(12), &running, ram_budget(24), &groups),
            start(&[], &["a"])
        );
        // If only evicting embed would make room, wait.
        assert_eq!(
            decide("b", ram(22), &running, ram_budget(24), &groups),
            Decision::Wait { for_memory: true }
        );
        // An unknown footprint starts "alone" next to persistent models.
        assert_eq!(
            decide("b", Footprint::UNKNOWN, &running, ram_budget(24), &groups),
            start(&[], &["a"])
        );
    }

    #[test]
    fn the_matrix_router_replaces_group_rules_and_memory_applies_on_top() {
        let t = Instant::now();
        let running = [
            resident("a", Some(10), true, 50, t),
            resident("b", Some(10), true, 5, t),
        ];
        // The matrix evicts b; a stays and the 10 GiB target fits next to it.
        let evict = vec!["b".to_string()];
        assert_eq!(
            decide_with_router("c", ram(10), &running, ram_budget(24), &[], Some(&evict)),
            start(&["b"], &[])
        );
        // The matrix keeps both, but 12 GiB does not fit next to their 20: memory evicts a (LRU).
        assert_eq!(
            decide_with_router("c", ram(12), &running, ram_budget(24), &[], Some(&[])),
            start(&[], &["a"])
        );
        // A busy model the matrix wants gone makes the swap wait.
        let busy = [resident("b", Some(1), false, 5, t)];
        assert_eq!(
            decide_with_router("c", ram(1), &busy, ram_budget(24), &[], Some(&evict)),
            Decision::Wait { for_memory: false }
        );
    }

    #[test]
    fn without_budgets_only_group_rules_apply() {
        let t = Instant::now();
        let groups = default_group(&["a", "b"]);
        let running = [resident("a", None, true, 5, t)];
        assert_eq!(
            decide(
                "b",
                Footprint::UNKNOWN,
                &running,
                Budgets::default(),
                &groups
            ),
            start(&[], &[])
        );
    }

    #[test]
    fn stopping_models_count_until_they_are_gone() {
        // A stopping model is not idle (it cannot be evicted again) but still holds memory.
        let t = Instant::now();
        let groups = default_group(&["a", "b"]);
        let running = [resident("a", Some(20), false, 5, t)];
        assert_eq!(
            decide("b", ram(10), &running, ram_budget(24), &groups),
            Decision::Wait { for_memory: true }
        );
    }

    #[test]
    fn growth_past_budget_plus_reserve_evicts_the_lru_idle_model() {
        let t = Instant::now();
        let groups = vec![group("keep", false, false, true, &["p"])];
        let running = [
            resident("p", Some(4), true, 99, t),
            resident("a", Some(10), true, 50, t),
            resident("b", Some(11), true, 10, t),
            resident("c", Some(1), false, 90, t),
        ];
        // 26 GiB used: within 24 + 2 reserve, nothing happens.
        assert_eq!(
            over_budget(&running, ram_budget(24), 2 * GIB, &groups),
            None
        );
        // Over 24 + 1: a is the LRU idle non-persistent model (c is busy, p persistent).
        assert_eq!(
            over_budget(&running, ram_budget(24), GIB, &groups),
            Some(("a", Kind::Ram, 26 * GIB))
        );
    }
}
