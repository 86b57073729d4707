//! Step 2 of loading: llama-swap's `${name}` macros, expanded over the decoded YAML tree.
//!
//! Macros form an ordered list (declaration order). Substitution walks the list from the last
//! macro to the first, so a macro may use macros declared before it but not after it; a
//! forward reference is left in place and reported later as an unknown macro. A string that is
//! exactly `${name}` takes the macro's typed value (a number stays a number); anywhere else the
//! value is interpolated as text.

use serde_yaml::Value;

use super::error::{ConfigError, KeyPath, Reporter};

/// Names that the loader itself assigns and that user macros may not take.
const RESERVED: [&str; 3] = ["PORT", "MODEL_ID", "PID"];

/// One macro: its name and its scalar value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Macro {
    pub(crate) name: String,
    pub(crate) value: Value,
}

impl Macro {
    pub(crate) fn new(name: &str, value: Value) -> Macro {
        Macro {
            name: name.to_string(),
            value,
        }
    }

    fn slug(&self) -> String {
        format!("${{{}}}", self.name)
    }
}

/// Renders a scalar the way Go's `%v` does for the types YAML produces.
pub(crate) fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                integer.to_string()
            } else if let Some(unsigned) = number.as_u64() {
                unsigned.to_string()
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                if float.is_finite() && float.fract() == 0.0 && float.abs() < 1e21 {
                    format!("{float:.0}")
                } else {
                    float.to_string()
                }
            }
        }
        Value::Null => String::new(),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => String::new(),
    }
}

/// Reads and validates a `macros:` mapping (global or per model) into an ordered list.
pub(crate) fn parse_list(
    value: Option<&Value>,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<Vec<Macro>, ConfigError> {
    let mapping = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Mapping(mapping)) => mapping,
        Some(other) => {
            return Err(reporter.error(
                path,
                format!(
                    "expected a mapping of macro names to values, found {}",
                    super::typed::describe(other)
                ),
            ))
        }
    };
    let mut list = Vec::with_capacity(mapping.len());
    for (key, value) in mapping {
        let name = key.as_str().unwrap_or_default();
        let macro_path = path.key(name);
        if name.len() >= 64 {
            return Err(reporter.error(
                &macro_path,
                format!("macro name '{name}' is longer than 63 characters"),
            ));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        {
            return Err(reporter.error(
                &macro_path,
                format!("macro name '{name}' must match ^[a-zA-Z0-9_-]+$"),
            ));
        }
        if RESERVED.contains(&name) {
            return Err(reporter.error(
                &macro_path,
                format!(
                    "macro name '{name}' is reserved (PORT, MODEL_ID and PID are set by swapd)"
                ),
            ));
        }
        match value {
            Value::String(text) => {
                if text.contains(&format!("${{{name}}}")) {
                    return Err(
                        reporter.error(&macro_path, format!("macro '{name}' refers to itself"))
                    );
                }
            }
            Value::Number(_) | Value::Bool(_) => {}
            other => {
                return Err(reporter.error(
                    &macro_path,
                    format!(
                        "macro '{name}' must be a string, number or boolean, found {}",
                        super::typed::describe(other)
                    ),
                ))
            }
        }
        list.push(Macro::new(name, value.clone()));
    }
    Ok(list)
}

/// The macros visible inside one model: `MODEL_ID`, then the globals with same-named model
/// macros replacing them in place, then the model's new macros in declaration order.
pub(crate) fn model_scope(model_id: &str, globals: &[Macro], locals: &[Macro]) -> Vec<Macro> {
    let mut scope = Vec::with_capacity(globals.len() + locals.len() + 1);
    scope.push(Macro::new("MODEL_ID", Value::String(model_id.to_string())));
    scope.extend(globals.iter().cloned());
    for local in locals {
        match scope
            .iter_mut()
            .find(|existing| existing.name == local.name)
        {
            Some(existing) => *existing = local.clone(),
            None => scope.push(local.clone()),
        }
    }
    scope
}

/// Expands the macros in one string, walking the list from last to first.
pub(crate) fn expand_str(text: &str, macros: &[Macro]) -> Value {
    let mut current = text.to_string();
    for entry in macros.iter().rev() {
        let slug = entry.slug();
        if current == slug {
            match &entry.value {
                // A string value may itself use earlier macros, which the rest of the walk
                // (over the macros declared before this one) will expand.
                Value::String(inner) => {
                    current = inner.clone();
                    continue;
                }
                typed => return typed.clone(),
            }
        }
        if current.contains(&slug) {
            let replacement = scalar_text(&entry.value);
            let uses = current.matches(&slug).count();
            let grown = current.len() - uses * slug.len() + uses * replacement.len();
            if grown > MAX_EXPANDED_BYTES {
                // Macros that repeat earlier macros grow exponentially ("billion laughs"); stop
                // and leave a marker that validation reports as an error naming the field.
                return Value::String(format!("${{{TOO_LARGE}}}"));
            }
            current = current.replace(&slug, &replacement);
        }
    }
    Value::String(current)
}

/// The largest string macro expansion may produce.
const MAX_EXPANDED_BYTES: usize = 1024 * 1024;

/// The marker left by an expansion that grew past [`MAX_EXPANDED_BYTES`].
const TOO_LARGE: &str = "swapd-expansion-too-large";

/// Expands macros in every string of `value` (mapping keys are left alone).
pub(crate) fn expand_value(value: &mut Value, macros: &[Macro]) {
    match value {
        Value::String(text) => {
            if text.contains("${") {
                *value = expand_str(text, macros);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                expand_value(item, macros);
            }
        }
        Value::Mapping(mapping) => {
            for (_, item) in mapping.iter_mut() {
                expand_value(item, macros);
            }
        }
        Value::Tagged(tagged) => expand_value(&mut tagged.value, macros),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The first `${name}` reference left in `text`, skipping `${PID}` when `allow_pid` is set.
pub(crate) fn leftover(text: &str, allow_pid: bool) -> Option<&str> {
    let mut search = 0;
    while let Some(found) = text[search..].find("${") {
        let start = search + found + 2;
        search = start;
        let length = text[start..]
            .bytes()
            .take_while(|byte| byte.is_ascii_alphanumeric() || *byte == b'_' || *byte == b'-')
            .count();
        if length == 0 || !text[start + length..].starts_with('}') {
            continue;
        }
        let name = &text[start..start + length];
        if allow_pid && name == "PID" {
            continue;
        }
        return Some(name);
    }
    None
}

/// The message for a macro reference that survived expansion.
pub(crate) fn leftover_message(name: &str) -> String {
    match name {
        "PORT" => {
            "unknown macro '${PORT}' (a port is only assigned to models whose cmd uses ${PORT})"
                .to_string()
        }
        "MODEL_ID" => "unknown macro '${MODEL_ID}' (it is only defined inside models)".to_string(),
        "PID" => "unknown macro '${PID}' (it is only available in cmdStop)".to_string(),
        TOO_LARGE => format!(
            "macro expansion grows past {} KiB (macros repeating other macros grow exponentially)",
            MAX_EXPANDED_BYTES / 1024
        ),
        other => format!("unknown macro '${{{other}}}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, Value)]) -> Vec<Macro> {
        pairs
            .iter()
            .map(|(name, value)| Macro::new(name, value.clone()))
            .collect()
    }

    fn text(value: &str) -> Value {
        Value::String(value.to_string())
    }

    #[test]
    fn later_macros_may_use_earlier_ones() {
        let macros = list(&[("a", text("A")), ("b", text("${a}-B"))]);
        assert_eq!(expand_str("x ${b} y", &macros), text("x A-B y"));
    }

    #[test]
    fn forward_references_stay_unresolved() {
        let macros = list(&[("a", text("${b}")), ("b", text("B"))]);
        assert_eq!(expand_str("x ${a}", &macros), text("x ${b}"));
        assert_eq!(leftover("x ${b}", false), Some("b"));
    }

    #[test]
    fn whole_value_macros_keep_their_type() {
        let macros = list(&[
            ("n", Value::Number(7.into())),
            ("f", serde_yaml::from_str("0.5").expect("float")),
            ("t", Value::Bool(true)),
            ("s", text("${n}")),
        ]);
        assert_eq!(expand_str("${n}", &macros), Value::Number(7.into()));
        assert_eq!(expand_str("${t}", &macros), Value::Bool(true));
        assert_eq!(expand_str("${f}", &macros).as_f64(), Some(0.5));
        assert_eq!(expand_str("${s}", &macros), Value::Number(7.into()));
        assert_eq!(
            expand_str("n=${n} f=${f} t=${t}", &macros),
            text("n=7 f=0.5 t=true")
        );
    }

    #[test]
    fn go_formatting_of_whole_floats() {
        let whole: Value = serde_yaml::from_str("2.0").expect("float");
        assert_eq!(scalar_text(&whole), "2");
    }

    #[test]
    fn model_macros_replace_globals_in_place() {
        let globals = list(&[("a", text("ga")), ("b", text("gb"))]);
        let locals = list(&[("b", text("lb")), ("c", text("lc"))]);
        let scope = model_scope("m", &globals, &locals);
        let names: Vec<_> = scope.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(names, ["MODEL_ID", "a", "b", "c"]);
        assert_eq!(scope[2].value, text("lb"));
    }

    #[test]
    fn exponential_expansion_is_cut_off() {
        let mut pairs = vec![("m0".to_string(), text("xxxxxxxxxxxxxxxx"))];
        for i in 1..30 {
            pairs.push((
                format!("m{i}"),
                text(&format!("${{m{}}}${{m{}}}", i - 1, i - 1)),
            ));
        }
        let macros: Vec<Macro> = pairs
            .iter()
            .map(|(n, v)| Macro::new(n, v.clone()))
            .collect();
        let expanded = expand_str("${m29}", &macros);
        let Value::String(expanded) = expanded else {
            panic!("a string")
        };
        let name = leftover(&expanded, false).expect("marker left");
        assert!(leftover_message(name).contains("grows past"));
    }

    #[test]
    fn leftover_skips_pid_only_when_allowed() {
        assert_eq!(leftover("kill ${PID}", true), None);
        assert_eq!(leftover("kill ${PID}", false), Some("PID"));
        assert_eq!(leftover("kill ${PID} ${x}", true), Some("x"));
        assert_eq!(leftover("$ {x} ${} ${a.b}", false), None);
    }
}
