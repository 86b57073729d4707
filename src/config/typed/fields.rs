//! Reading the decoded YAML by hand: `normalize` (string keys, no tags, as Go decodes), scalar
//! coercion with llama-swap's leniency (numbers as strings, `yes`/`no` booleans), and
//! [`Fields`], typed access to one mapping's keys with errors that name `path.key`.

use crate::config::error::{ConfigError, KeyPath, Reporter};
use crate::config::macros;
use serde_yaml::{Mapping, Value};

/// A short description of a value for "expected X, found Y" messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "an empty value".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(_) => macros::scalar_text(value),
        Value::String(text) => format!("'{text}'"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => describe(&tagged.value),
    }
}

/// Strips YAML tags and turns every mapping key into a string, as Go's map[string] decoding
/// does, so that later steps can index mappings by name.
pub(crate) fn normalize(
    value: Value,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<Value, ConfigError> {
    match value {
        Value::Tagged(tagged) => normalize(tagged.value, path, reporter),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| normalize(item, &path.index(index), reporter))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Sequence),
        Value::Mapping(mapping) => {
            let mut normalized = Mapping::with_capacity(mapping.len());
            for (key, item) in mapping {
                let key = match key {
                    Value::String(text) => text,
                    Value::Null | Value::Bool(_) | Value::Number(_) => macros::scalar_text(&key),
                    Value::Tagged(tagged) => macros::scalar_text(&tagged.value),
                    Value::Sequence(_) | Value::Mapping(_) => {
                        return Err(reporter.error(path, "mapping keys must be plain scalars"))
                    }
                };
                let item_path = path.key(&key);
                if normalized.contains_key(key.as_str()) {
                    return Err(reporter.error(&item_path, format!("duplicate key '{key}'")));
                }
                let item = normalize(item, &item_path, reporter)?;
                normalized.insert(Value::String(key), item);
            }
            Ok(Value::Mapping(normalized))
        }
        scalar => Ok(scalar),
    }
}

/// Reads a scalar as a string and rejects macro references that survived expansion.
pub(super) fn string_value(
    value: &Value,
    path: &KeyPath,
    reporter: &Reporter<'_>,
    allow_pid: bool,
) -> Result<String, ConfigError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(_) | Value::Bool(_) => macros::scalar_text(value),
        other => {
            return Err(reporter.error(
                path,
                format!("expected a string, found {}", describe(other)),
            ))
        }
    };
    if let Some(name) = macros::leftover(&text, allow_pid) {
        return Err(reporter.error(path, macros::leftover_message(name)));
    }
    Ok(text)
}

fn int_value(value: &Value, path: &KeyPath, reporter: &Reporter<'_>) -> Result<i64, ConfigError> {
    if let Value::String(text) = value {
        if let Some(name) = macros::leftover(text, false) {
            return Err(reporter.error(path, macros::leftover_message(name)));
        }
        if let Ok(number) = text.trim().parse::<i64>() {
            return Ok(number);
        }
    }
    value.as_i64().ok_or_else(|| {
        reporter.error(
            path,
            format!("expected a whole number, found {}", describe(value)),
        )
    })
}

fn bool_value(value: &Value, path: &KeyPath, reporter: &Reporter<'_>) -> Result<bool, ConfigError> {
    match value {
        Value::Bool(flag) => return Ok(*flag),
        Value::String(text) => {
            if let Some(name) = macros::leftover(text, false) {
                return Err(reporter.error(path, macros::leftover_message(name)));
            }
            // yaml.v3 accepts YAML 1.1 spellings when decoding into a bool field.
            match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "on" => return Ok(true),
                "false" | "no" | "n" | "off" => return Ok(false),
                _ => {}
            }
        }
        _ => {}
    }
    Err(reporter.error(
        path,
        format!("expected true or false, found {}", describe(value)),
    ))
}

/// Converts a YAML value into JSON for request filters and metadata.
fn json_value(
    value: &Value,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<serde_json::Value, ConfigError> {
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(flag) => serde_json::Value::Bool(*flag),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                serde_json::Value::from(integer)
            } else if let Some(unsigned) = number.as_u64() {
                serde_json::Value::from(unsigned)
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(float)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| {
                        reporter.error(path, format!("{float} cannot be represented in JSON"))
                    })?
            }
        }
        Value::String(_) => serde_json::Value::String(string_value(value, path, reporter, false)?),
        Value::Sequence(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| json_value(item, &path.index(index), reporter))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(mapping) => serde_json::Value::Object(json_object(mapping, path, reporter)?),
        Value::Tagged(tagged) => json_value(&tagged.value, path, reporter)?,
    })
}

pub(crate) fn json_object(
    mapping: &Mapping,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let mut object = serde_json::Map::new();
    for (key, item) in mapping {
        let key = key.as_str().unwrap_or_default();
        object.insert(key.to_string(), json_value(item, &path.key(key), reporter)?);
    }
    Ok(object)
}

/// Typed access to the keys of one mapping, with errors that name `path.key`.
pub(crate) struct Fields<'m> {
    mapping: &'m Mapping,
    path: KeyPath,
}

impl<'m> Fields<'m> {
    pub(crate) fn new(mapping: &'m Mapping, path: &KeyPath) -> Fields<'m> {
        Fields {
            mapping,
            path: path.clone(),
        }
    }

    /// The value of `key`; an explicit null counts as absent, as in Go.
    pub(crate) fn get(&self, key: &str) -> Option<&'m Value> {
        self.mapping.get(key).filter(|value| !value.is_null())
    }

    pub(crate) fn path(&self, key: &str) -> KeyPath {
        self.path.key(key)
    }

    pub(crate) fn string(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|value| string_value(value, &self.path(key), reporter, false))
            .transpose()
    }

    /// A string where an empty value means "not set".
    pub(crate) fn optional_string(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<String>, ConfigError> {
        Ok(self.string(key, reporter)?.filter(|text| !text.is_empty()))
    }

    pub(crate) fn int(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<i64>, ConfigError> {
        self.get(key)
            .map(|value| int_value(value, &self.path(key), reporter))
            .transpose()
    }

    pub(crate) fn bool(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|value| bool_value(value, &self.path(key), reporter))
            .transpose()
    }

    pub(crate) fn mapping(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
        expected: &str,
    ) -> Result<Option<&'m Mapping>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Mapping(mapping)) => Ok(Some(mapping)),
            Some(other) => Err(reporter.error(
                &self.path(key),
                format!("expected {expected}, found {}", describe(other)),
            )),
        }
    }

    /// The mapping at `key` as fields of their own, its keys checked against `known` (unknown
    /// ones are warnings); `None` when absent.
    pub(crate) fn section(
        &self,
        key: &str,
        known: &[&str],
        reporter: &mut Reporter<'_>,
    ) -> Result<Option<Fields<'m>>, ConfigError> {
        let Some(mapping) = self.mapping(key, reporter, "a mapping")? else {
            return Ok(None);
        };
        let path = self.path(key);
        super::super::schema::check_keys(mapping, &path, known, reporter);
        Ok(Some(Fields::new(mapping, &path)))
    }

    pub(crate) fn strings(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Vec<String>, ConfigError> {
        let path = self.path(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| string_value(item, &path.index(index), reporter, false))
                .collect(),
            Some(other) => Err(reporter.error(
                &path,
                format!("expected a list of strings, found {}", describe(other)),
            )),
        }
    }

    /// A whole number of seconds that must not be negative.
    pub(crate) fn seconds(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        let value = self.int(key, reporter)?.unwrap_or(default);
        if value < 0 {
            return Err(reporter.error(
                &self.path(key),
                format!("must be 0 or more seconds, found {value}"),
            ));
        }
        Ok(value)
    }

    /// A count or size that must be greater than zero.
    pub(crate) fn positive(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match self.int(key, reporter)? {
            None => Ok(default),
            Some(value) if value > 0 => Ok(usize::try_from(value).unwrap_or(usize::MAX)),
            Some(value) => Err(reporter.error(
                &self.path(key),
                format!("must be greater than 0, found {value}"),
            )),
        }
    }
}
