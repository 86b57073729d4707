//! Step 4, what runs together: `groups` (or `routing.matrix`, handed to `config::matrix`),
//! `routing.scheduler` and `hooks.on_startup.preload`, validated against the built models
//! and aliases.

use super::{describe, Fields};
use crate::config::error::{ConfigError, KeyPath, Reporter};
use crate::config::{schema, GroupConfig, ModelConfig, DEFAULT_GROUP_ID};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;

/// Where the matrix settings were found: the mapping and its key path.
type MatrixSource<'m> = (&'m Mapping, KeyPath);

/// Reads `groups` (legacy) or `routing.router.settings.groups`, validates membership and adds
/// the implicit `(default)` group holding every ungrouped model.
pub(super) fn build_groups<'m>(
    top: &Fields<'m>,
    models: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    reporter: &mut Reporter<'_>,
) -> Result<(Vec<GroupConfig>, Option<MatrixSource<'m>>), ConfigError> {
    let mut router_groups: Option<(&Mapping, KeyPath)> = None;
    let mut router_matrix: Option<(&Mapping, KeyPath)> = None;
    let mut use_matrix = false;
    let mut router_used = false;
    if let Some(routing) =
        top.mapping("routing", reporter, "a mapping with router and scheduler")?
    {
        let routing_path = top.path("routing");
        schema::check_keys(routing, &routing_path, schema::ROUTING, reporter);
        let routing_fields = Fields::new(routing, &routing_path);
        if let Some(router) =
            routing_fields.mapping("router", reporter, "a mapping with use and settings")?
        {
            let router_path = routing_path.key("router");
            schema::check_keys(router, &router_path, schema::ROUTER, reporter);
            let router_fields = Fields::new(router, &router_path);
            let use_name = router_fields.string("use", reporter)?;
            match use_name.as_deref() {
                None | Some("") | Some("group") => {}
                Some("matrix") => use_matrix = true,
                Some(other) => {
                    return Err(reporter.error(
                        &router_path.key("use"),
                        format!("unknown router '{other}' (valid: group, matrix)"),
                    ))
                }
            }
            router_used = use_name.is_some();
            if let Some(settings) =
                router_fields.mapping("settings", reporter, "a mapping with groups")?
            {
                let settings_path = router_path.key("settings");
                schema::check_keys(settings, &settings_path, schema::ROUTER_SETTINGS, reporter);
                let settings_fields = Fields::new(settings, &settings_path);
                if let Some(matrix) = settings_fields.mapping(
                    "matrix",
                    reporter,
                    "a mapping with vars, evict_costs and sets",
                )? {
                    router_used = true;
                    if use_matrix {
                        router_matrix = Some((matrix, settings_path.key("matrix")));
                    } else {
                        reporter.warn(
                            &settings_path.key("matrix"),
                            "ignored: routing.router.use is not matrix, so the group router is in use",
                        );
                    }
                }
                if let Some(groups) = settings_fields.mapping(
                    "groups",
                    reporter,
                    "a mapping of group ids to groups",
                )? {
                    router_used = true;
                    if use_matrix {
                        return Err(reporter.error(
                            &settings_path.key("groups"),
                            "groups and matrix cannot be used together; routing.router.use is matrix",
                        ));
                    }
                    router_groups = Some((groups, settings_path.key("groups")));
                }
                if use_matrix && router_matrix.is_none() {
                    return Err(reporter.error(
                        &settings_path,
                        "routing.router.use is matrix, so routing.router.settings.matrix is required",
                    ));
                }
            }
        }
    }
    if use_matrix && router_matrix.is_none() {
        return Err(reporter.error(
            &top.path("routing").key("router").key("settings"),
            "routing.router.use is matrix, so routing.router.settings.matrix is required",
        ));
    }
    let legacy_matrix = top.mapping(
        "matrix",
        reporter,
        "a mapping with vars, evict_costs and sets",
    )?;
    if legacy_matrix.is_some() && (router_used || use_matrix) {
        return Err(reporter.error(
            &top.path("matrix"),
            "the top-level `matrix` cannot be combined with `routing.router`; move it to routing.router.settings.matrix",
        ));
    }
    let legacy = top.mapping("groups", reporter, "a mapping of group ids to groups")?;
    if legacy.is_some() && legacy_matrix.is_some() {
        return Err(reporter.error(
            &top.path("matrix"),
            "groups and matrix cannot be used together",
        ));
    }
    let matrix = match legacy_matrix {
        Some(matrix) => Some((matrix, top.path("matrix"))),
        None => router_matrix,
    };
    if legacy.is_some() && router_used {
        return Err(reporter.error(
            &top.path("groups"),
            "the top-level `groups` cannot be combined with `routing.router`; move the groups to routing.router.settings.groups",
        ));
    }
    let source = match legacy {
        Some(groups) => Some((groups, top.path("groups"))),
        None => router_groups,
    };

    let mut groups = Vec::new();
    let mut member_of: BTreeMap<String, String> = BTreeMap::new();
    if let Some((mapping, groups_path)) = source {
        let mut entries: Vec<(&str, &Value)> = mapping
            .iter()
            .map(|(key, value)| (key.as_str().unwrap_or_default(), value))
            .collect();
        entries.sort_by(|left, right| left.0.cmp(right.0));
        for (group_id, value) in entries {
            let path = groups_path.key(group_id);
            if group_id == DEFAULT_GROUP_ID {
                return Err(reporter.error(
                    &path,
                    format!("the group id '{DEFAULT_GROUP_ID}' is reserved for ungrouped models"),
                ));
            }
            let empty = Mapping::new();
            let group = match value {
                Value::Null => &empty,
                Value::Mapping(group) => group,
                other => {
                    return Err(reporter.error(
                        &path,
                        format!(
                        "expected a mapping with swap, exclusive, persistent and members, found {}",
                        describe(other)
                    ),
                    ))
                }
            };
            schema::check_keys(group, &path, schema::GROUP, reporter);
            let fields = Fields::new(group, &path);
            let members = fields.strings("members", reporter)?;
            for (index, member) in members.iter().enumerate() {
                let member_path = path.key("members").index(index);
                if !models.contains_key(member) {
                    let message = match aliases.get(member) {
                        Some(owner) => format!(
                            "'{member}' is an alias of model '{owner}'; group members must be model ids"
                        ),
                        None => format!("unknown model '{member}'"),
                    };
                    return Err(reporter.error(&member_path, message));
                }
                if members[..index].contains(member) {
                    return Err(reporter.error(
                        &member_path,
                        format!("model '{member}' is listed twice in group '{group_id}'"),
                    ));
                }
                if let Some(other) = member_of.get(member) {
                    return Err(reporter.error(
                        &member_path,
                        format!("model '{member}' is already a member of group '{other}'"),
                    ));
                }
                member_of.insert(member.clone(), group_id.to_string());
            }
            groups.push(GroupConfig {
                id: group_id.to_string(),
                swap: fields.bool("swap", reporter)?.unwrap_or(true),
                exclusive: fields.bool("exclusive", reporter)?.unwrap_or(true),
                persistent: fields.bool("persistent", reporter)?.unwrap_or(false),
                members,
            });
        }
    }
    let ungrouped: Vec<String> = models
        .keys()
        .filter(|id| !member_of.contains_key(*id))
        .cloned()
        .collect();
    if !ungrouped.is_empty() {
        groups.push(GroupConfig {
            id: DEFAULT_GROUP_ID.to_string(),
            swap: true,
            exclusive: true,
            persistent: false,
            members: ungrouped,
        });
    }
    Ok((groups, matrix))
}

/// Validates `routing.scheduler`; swapd's scheduler is first-in, first-out only.
pub(super) fn check_scheduler(
    top: &Fields<'_>,
    resolve: &dyn Fn(&str) -> Option<String>,
    reporter: &mut Reporter<'_>,
) -> Result<(), ConfigError> {
    let Some(routing) = top.mapping("routing", reporter, "a mapping with router and scheduler")?
    else {
        return Ok(());
    };
    let routing_path = top.path("routing");
    let routing_fields = Fields::new(routing, &routing_path);
    let Some(scheduler) =
        routing_fields.mapping("scheduler", reporter, "a mapping with use and settings")?
    else {
        return Ok(());
    };
    let scheduler_path = routing_path.key("scheduler");
    schema::check_keys(scheduler, &scheduler_path, schema::SCHEDULER, reporter);
    let scheduler_fields = Fields::new(scheduler, &scheduler_path);
    match scheduler_fields.string("use", reporter)?.as_deref() {
        None | Some("") | Some("fifo") => {}
        Some(other) => {
            return Err(reporter.error(
                &scheduler_path.key("use"),
                format!("unknown scheduler '{other}' (valid: fifo)"),
            ))
        }
    }
    let Some(settings) = scheduler_fields.mapping("settings", reporter, "a mapping with fifo")?
    else {
        return Ok(());
    };
    let settings_path = scheduler_path.key("settings");
    schema::check_keys(
        settings,
        &settings_path,
        schema::SCHEDULER_SETTINGS,
        reporter,
    );
    let settings_fields = Fields::new(settings, &settings_path);
    let Some(fifo) = settings_fields.mapping("fifo", reporter, "a mapping with priority")? else {
        return Ok(());
    };
    let fifo_path = settings_path.key("fifo");
    schema::check_keys(fifo, &fifo_path, schema::FIFO, reporter);
    let fifo_fields = Fields::new(fifo, &fifo_path);
    let Some(priority) =
        fifo_fields.mapping("priority", reporter, "a mapping of model ids to numbers")?
    else {
        return Ok(());
    };
    let priority_path = fifo_path.key("priority");
    let priority_fields = Fields::new(priority, &priority_path);
    for key in priority.keys() {
        let name = key.as_str().unwrap_or_default();
        if resolve(name).is_none() {
            return Err(reporter.error(&priority_path.key(name), format!("unknown model '{name}'")));
        }
        priority_fields.int(name, reporter)?;
    }
    if !priority.is_empty() {
        reporter.warn(
            &priority_path,
            "swapd serves queued requests first in, first out; priorities are ignored",
        );
    }
    Ok(())
}

/// Reads `hooks.on_startup.preload`: trimmed, aliases resolved, unknown names dropped.
pub(super) fn build_preload(
    top: &Fields<'_>,
    resolve: &dyn Fn(&str) -> Option<String>,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<String>, ConfigError> {
    let Some(hooks) = top.mapping("hooks", reporter, "a mapping with on_startup")? else {
        return Ok(Vec::new());
    };
    let hooks_path = top.path("hooks");
    schema::check_keys(hooks, &hooks_path, schema::HOOKS, reporter);
    let hooks_fields = Fields::new(hooks, &hooks_path);
    let Some(on_startup) =
        hooks_fields.mapping("on_startup", reporter, "a mapping with preload")?
    else {
        return Ok(Vec::new());
    };
    let on_startup_path = hooks_path.key("on_startup");
    schema::check_keys(on_startup, &on_startup_path, schema::ON_STARTUP, reporter);
    let on_startup_fields = Fields::new(on_startup, &on_startup_path);
    let mut preload = Vec::new();
    for (index, name) in on_startup_fields
        .strings("preload", reporter)?
        .iter()
        .enumerate()
    {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        match resolve(name) {
            Some(id) => preload.push(id),
            None => reporter.warn(
                &on_startup_path.key("preload").index(index),
                format!("unknown model '{name}'; it is not preloaded"),
            ),
        }
    }
    Ok(preload)
}
