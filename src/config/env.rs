//! Step 1 of loading: `${env.NAME}` substitution over the raw YAML text.
//!
//! llama-swap replaces environment macros at string level before the YAML is parsed, so they
//! work anywhere (keys, numbers, inside quotes). Occurrences inside YAML comments are ignored,
//! an unset variable fails the load, and values that could break the YAML structure (line
//! breaks, NUL) are rejected. Unlike llama-swap, which escapes `\` and `"` everywhere, the
//! value is escaped only where the surrounding quoting needs it, so a plain `path: ${env.X}`
//! receives the variable byte for byte.

use std::path::Path;

use super::error::{ConfigError, KeyPath};
use super::scan::{scan, Context, Locator};

const PREFIX: &str = "${env.";

/// Replaces every `${env.NAME}` outside comments with the variable's value from `lookup`.
pub(crate) fn substitute(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if !text.contains(PREFIX) {
        return Ok(text.to_string());
    }
    let scanned = scan(text);
    let locator = Locator::new(&scanned);
    let mut output = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(PREFIX) {
        let start = search + found;
        search = start + PREFIX.len();
        let Some(name) = variable_name(&text[search..]) else {
            continue;
        };
        let end = search + name.len() + 1;
        let context = scanned.context_at(start);
        if context == Context::Comment {
            search = end;
            continue;
        }
        let error = |message: String| {
            let line = scanned.line_at(start);
            let key = line
                .and_then(|line| locator.path_at_line(line.number))
                .map(|segments| KeyPath::from_segments(segments.to_vec()).to_string())
                .unwrap_or_default();
            ConfigError {
                path: file.to_path_buf(),
                line: line.map(|line| line.number),
                column: line.map(|line| text[line.start..start].chars().count() + 1),
                key,
                message,
            }
        };
        let Some(value) = lookup(name) else {
            return Err(error(format!("environment variable '{name}' is not set")));
        };
        if value.contains(['\n', '\r', '\0']) {
            return Err(error(format!(
                "environment variable '{name}' contains a line break or NUL byte, which cannot be substituted into YAML"
            )));
        }
        output.push_str(&text[copied..start]);
        output.push_str(&escape(&value, context));
        copied = end;
        search = end;
    }
    output.push_str(&text[copied..]);
    Ok(output)
}

/// The variable name at the start of `rest` if it is followed by `}`: `[A-Za-z_][A-Za-z0-9_]*`.
fn variable_name(rest: &str) -> Option<&str> {
    let length = rest
        .bytes()
        .take_while(|byte| byte.is_ascii_alphanumeric() || *byte == b'_')
        .count();
    let name = &rest[..length];
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_alphabetic() || byte == b'_');
    (first_ok && rest[length..].starts_with('}')).then_some(name)
}

/// Escapes `value` so that it reads back unchanged inside the given quoting.
fn escape(value: &str, context: Context) -> String {
    match context {
        Context::DoubleQuoted => value.replace('\\', "\\\\").replace('"', "\\\""),
        Context::SingleQuoted => value.replace('\'', "''"),
        Context::Plain | Context::Comment | Context::BlockScalar => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/me".to_string()),
            "QUOTE" => Some("a\"b\\c'd".to_string()),
            "BAD" => Some("a\nb".to_string()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, ConfigError> {
        substitute(text, Path::new("config.yaml"), &lookup)
    }

    #[test]
    fn substitutes_outside_comments_only() {
        let text = "a: ${env.HOME_DIR}/x # ${env.UNSET}\n# ${env.UNSET}\nb: \"${env.HOME_DIR}\"\n";
        assert_eq!(
            run(text).expect("loads"),
            "a: /home/me/x # ${env.UNSET}\n# ${env.UNSET}\nb: \"/home/me\"\n"
        );
    }

    #[test]
    fn escapes_for_the_surrounding_quotes() {
        let text = "a: \"${env.QUOTE}\"\nb: '${env.QUOTE}'\nc: ${env.QUOTE}\n";
        let output = run(text).expect("loads");
        assert_eq!(
            output,
            "a: \"a\\\"b\\\\c'd\"\nb: 'a\"b\\c''d'\nc: a\"b\\c'd\n"
        );
        let value: serde_yaml::Value = serde_yaml::from_str(&output).expect("valid yaml");
        for key in ["a", "b", "c"] {
            assert_eq!(value[key].as_str(), Some("a\"b\\c'd"));
        }
    }

    #[test]
    fn block_scalar_lines_that_look_like_comments_are_substituted() {
        let text = "cmd: |\n  run\n  # --home ${env.HOME_DIR}\n";
        assert_eq!(
            run(text).expect("loads"),
            "cmd: |\n  run\n  # --home /home/me\n"
        );
    }

    #[test]
    fn unset_variable_names_variable_line_and_key() {
        let error = run("models:\n  m:\n    cmd: run ${env.NOPE}\n").expect_err("unset");
        assert_eq!(error.line, Some(3));
        assert_eq!(error.column, Some(14));
        assert_eq!(error.key, "models.m.cmd");
        assert!(error.message.contains("'NOPE' is not set"), "{error}");
    }

    #[test]
    fn line_breaks_in_values_are_rejected() {
        let error = run("a: ${env.BAD}\n").expect_err("newline");
        assert!(error.message.contains("line break"), "{error}");
        assert_eq!(error.key, "a");
    }

    #[test]
    fn malformed_references_are_left_alone() {
        assert_eq!(
            run("a: ${env.} ${env.1X}\n").expect("loads"),
            "a: ${env.} ${env.1X}\n"
        );
    }
}
