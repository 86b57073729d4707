//! Step 4, one model: its typed `ModelConfig` with defaults (`build_model`), its `aliases`,
//! request `filters`, and the alias table of the whole config (`register_aliases`).

use super::fields::string_value;
use super::{
    describe, json_object, seconds, Fields, Globals, COMFYUI_MIN_CONCURRENCY, COMFYUI_MODEL_ID,
    DEFAULT_CHECK_ENDPOINT, DEFAULT_CONCURRENCY_LIMIT,
};
use crate::config::command::{display_command, split_command};
use crate::config::error::{ConfigError, KeyPath, Reporter};
use crate::config::{macros, schema, Filters, ModelConfig};
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn build_model(
    id: &str,
    mapping: &Mapping,
    path: &KeyPath,
    port: Option<u16>,
    globals: &Globals,
    reporter: &mut Reporter<'_>,
) -> Result<ModelConfig, ConfigError> {
    schema::check_keys(mapping, path, schema::MODEL, reporter);
    let fields = Fields::new(mapping, path);

    let cmd_path = path.key("cmd");
    let cmd_text = match fields.get("cmd") {
        Some(value) => string_value(value, &cmd_path, reporter, false)?,
        None => return Err(reporter.error(&cmd_path, "cmd is required")),
    };
    let cmd = split_command(&cmd_text).map_err(|message| reporter.error(&cmd_path, message))?;
    if cmd.is_empty() {
        return Err(reporter.error(&cmd_path, "cmd is empty"));
    }
    let cmd_display = display_command(&cmd);

    let cmd_stop_path = path.key("cmdStop");
    let cmd_stop = match fields.get("cmdStop") {
        None => None,
        Some(value) => {
            let text = string_value(value, &cmd_stop_path, reporter, true)?;
            split_command(&text).map_err(|message| reporter.error(&cmd_stop_path, message))?;
            Some(text.trim().to_string()).filter(|text| !text.is_empty())
        }
    };

    let proxy = match fields.string("proxy", reporter)? {
        Some(text) => {
            let trimmed = text.trim().trim_end_matches('/').to_string();
            let host = trimmed
                .strip_prefix("http://")
                .or_else(|| trimmed.strip_prefix("https://"));
            if host.is_none_or(|host| host.is_empty()) {
                return Err(reporter.error(
                    &fields.path("proxy"),
                    format!("expected an http:// or https:// URL, found '{text}'"),
                ));
            }
            trimmed
        }
        None => format!(
            "http://localhost:{}",
            port.expect("a model without proxy was checked to use ${PORT} in cmd")
        ),
    };

    let aliases = build_aliases(&fields, reporter)?;

    let mut env = Vec::new();
    for (index, entry) in fields.strings("env", reporter)?.into_iter().enumerate() {
        match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                env.push((name.to_string(), value.to_string()));
            }
            _ => {
                return Err(reporter.error(
                    &fields.path("env").index(index),
                    format!("expected NAME=VALUE, found '{entry}'"),
                ))
            }
        }
    }

    let check_endpoint = match fields.string("checkEndpoint", reporter)? {
        None => Some(DEFAULT_CHECK_ENDPOINT.to_string()),
        Some(text) if text.trim() == "none" => None,
        Some(text) => {
            let trimmed = text.trim();
            if trimmed.starts_with('/') {
                Some(trimmed.to_string())
            } else {
                Some(format!("/{trimmed}"))
            }
        }
    };

    let ttl = match fields.int("ttl", reporter)? {
        None | Some(-1) => globals.global_ttl,
        Some(value) if value >= 0 => value,
        Some(value) => {
            return Err(reporter.error(
                &fields.path("ttl"),
                format!(
                    "must be -1 (use globalTTL), 0 (never unload) or a number of seconds, found {value}"
                ),
            ))
        }
    };
    let unload_timeout = match fields.seconds("unloadTimeout", reporter, 0)? {
        0 => globals.unload_timeout,
        value => value,
    };

    let mut concurrency_limit = match fields.int("concurrencyLimit", reporter)? {
        None | Some(0) => usize::try_from(DEFAULT_CONCURRENCY_LIMIT).unwrap_or(10),
        Some(value) if value > 0 => usize::try_from(value).unwrap_or(usize::MAX),
        Some(value) => {
            return Err(reporter.error(
                &fields.path("concurrencyLimit"),
                format!("must be 0 (the default of 10) or more, found {value}"),
            ))
        }
    };
    if id == COMFYUI_MODEL_ID {
        concurrency_limit = concurrency_limit.max(COMFYUI_MIN_CONCURRENCY);
    }

    let filters = build_filters(fields.get("filters"), &fields.path("filters"), reporter)?;
    let metadata = match fields.mapping("metadata", reporter, "a mapping")? {
        None => serde_json::Value::Null,
        Some(mapping) => {
            serde_json::Value::Object(json_object(mapping, &fields.path("metadata"), reporter)?)
        }
    };

    Ok(ModelConfig {
        id: id.to_string(),
        cmd,
        cmd_display,
        cmd_stop,
        proxy,
        aliases,
        env,
        check_endpoint,
        ttl: seconds(ttl),
        unload_timeout: seconds(unload_timeout),
        unlisted: fields.bool("unlisted", reporter)?.unwrap_or(false),
        use_model_name: fields.optional_string("useModelName", reporter)?,
        name: fields.optional_string("name", reporter)?,
        description: fields.optional_string("description", reporter)?,
        concurrency_limit,
        filters,
        metadata,
        capabilities: super::super::capabilities::build(&fields, reporter)?,
        ignore_websockets: id == COMFYUI_MODEL_ID || ignore_websockets(&fields, reporter)?,
        timeouts: super::super::timeouts::build(&fields, reporter)?,
        send_loading_state: fields
            .bool("sendLoadingState", reporter)?
            .unwrap_or(globals.send_loading_state),
        port,
    })
}

/// `compat.ignoreWebsockets`.
fn ignore_websockets(
    fields: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<bool, ConfigError> {
    let Some(compat) = fields.section("compat", schema::COMPAT, reporter)? else {
        return Ok(false);
    };
    Ok(compat.bool("ignoreWebsockets", reporter)?.unwrap_or(false))
}

/// Reads a model's `aliases`: strings, or (as some llama-swap versions write them) mappings
/// with an `id` plus display fields that swapd does not use.
fn build_aliases(
    fields: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<String>, ConfigError> {
    let path = fields.path("aliases");
    let items = match fields.get("aliases") {
        None => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            return Err(reporter.error(
                &path,
                format!("expected a list of strings, found {}", describe(other)),
            ))
        }
    };
    let mut aliases = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = path.index(index);
        let alias = match item {
            Value::Mapping(mapping) => {
                schema::check_keys(mapping, &item_path, schema::ALIAS, reporter);
                match mapping.get("id").filter(|id| !id.is_null()) {
                    Some(id) => string_value(id, &item_path.key("id"), reporter, false)?,
                    None => {
                        return Err(
                            reporter.error(&item_path, "an alias written as a mapping needs an id")
                        )
                    }
                }
            }
            other => string_value(other, &item_path, reporter, false)?,
        };
        if alias.trim().is_empty() {
            return Err(reporter.error(&item_path, "aliases must not be empty"));
        }
        aliases.push(alias);
    }
    Ok(aliases)
}

/// The parameter name request filters may never strip or set.
const PROTECTED_PARAM: &str = "model";

pub(crate) fn build_filters(
    value: Option<&Value>,
    path: &KeyPath,
    reporter: &mut Reporter<'_>,
) -> Result<Filters, ConfigError> {
    let mapping = match value {
        None => return Ok(Filters::default()),
        Some(Value::Mapping(mapping)) => mapping,
        Some(other) => {
            return Err(reporter.error(
                path,
                format!(
                    "expected a mapping with stripParams, setParams or setParamsByID, found {}",
                    describe(other)
                ),
            ))
        }
    };
    schema::check_keys(mapping, path, schema::FILTERS, reporter);
    let fields = Fields::new(mapping, path);
    if fields.get("setParamsByMatch").is_some() {
        reporter.warn(
            &fields.path("setParamsByMatch"),
            "not supported by swapd and ignored",
        );
    }

    let strip_text = match fields.string("stripParams", reporter)? {
        Some(text) => text,
        // llama-swap still accepts the old snake_case spelling.
        None => fields.string("strip_params", reporter)?.unwrap_or_default(),
    };
    let strip_params: BTreeSet<String> = strip_text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != PROTECTED_PARAM)
        .map(str::to_string)
        .collect();

    let mut set_params = match fields.mapping("setParams", reporter, "a mapping of parameters")? {
        None => serde_json::Map::new(),
        Some(mapping) => json_object(mapping, &fields.path("setParams"), reporter)?,
    };
    set_params.remove(PROTECTED_PARAM);

    let mut set_params_by_id = BTreeMap::new();
    let by_id_path = fields.path("setParamsByID");
    if let Some(by_id) = fields.mapping(
        "setParamsByID",
        reporter,
        "a mapping of requested model ids to parameters",
    )? {
        for (key, params) in by_id {
            let key = key.as_str().unwrap_or_default();
            let key_path = by_id_path.key(key);
            if let Some(name) = macros::leftover(key, false) {
                return Err(reporter.error(&key_path, macros::leftover_message(name)));
            }
            if key.is_empty() {
                return Err(reporter.error(&key_path, "keys must not be empty"));
            }
            let mut object = match params {
                Value::Null => serde_json::Map::new(),
                Value::Mapping(mapping) => json_object(mapping, &key_path, reporter)?,
                other => {
                    return Err(reporter.error(
                        &key_path,
                        format!(
                            "expected a mapping of parameters, found {}",
                            describe(other)
                        ),
                    ))
                }
            };
            object.remove(PROTECTED_PARAM);
            set_params_by_id.insert(key.to_string(), object);
        }
    }

    Ok(Filters {
        strip_params: strip_params.into_iter().collect(),
        set_params,
        set_params_by_id,
    })
}

/// Builds the alias table: explicit aliases first, then `setParamsByID` keys, each of which
/// becomes an alias of its model unless it is the model's own id.
pub(super) fn register_aliases(
    models: &mut BTreeMap<String, ModelConfig>,
    models_path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for (id, model) in models.iter() {
        for (index, alias) in model.aliases.iter().enumerate() {
            let path = models_path.key(id).key("aliases").index(index);
            if models.contains_key(alias) {
                return Err(
                    reporter.error(&path, format!("alias '{alias}' is also the id of a model"))
                );
            }
            if let Some(owner) = aliases.get(alias) {
                let message = if owner == id {
                    format!("alias '{alias}' is listed twice")
                } else {
                    format!("alias '{alias}' is already used by model '{owner}'")
                };
                return Err(reporter.error(&path, message));
            }
            aliases.insert(alias.clone(), id.clone());
        }
    }
    let ids: Vec<String> = models.keys().cloned().collect();
    for id in &ids {
        let keys: Vec<String> = models[id]
            .filters
            .set_params_by_id
            .keys()
            .cloned()
            .collect();
        for key in keys {
            if &key == id {
                continue;
            }
            let path = models_path
                .key(id)
                .key("filters")
                .key("setParamsByID")
                .key(&key);
            if models.contains_key(&key) {
                return Err(
                    reporter.error(&path, format!("key '{key}' is the id of another model"))
                );
            }
            match aliases.get(&key) {
                Some(owner) if owner == id => {}
                Some(owner) => {
                    return Err(reporter.error(
                        &path,
                        format!("key '{key}' is already an alias of model '{owner}'"),
                    ))
                }
                None => {
                    aliases.insert(key.clone(), id.clone());
                    if let Some(model) = models.get_mut(id) {
                        model.aliases.push(key);
                    }
                }
            }
        }
    }
    Ok(aliases)
}
