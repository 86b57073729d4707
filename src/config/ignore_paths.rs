//! `upstream.ignorePaths`: regular expressions for `/upstream/<model>/<path>` requests that must
//! not load a model. A browser tab left open on a model's own web UI keeps asking for its
//! scripts and icons; with these, such a request gets 409 while the model is not ready instead
//! of swapping it back in. llama-swap compiles them with Go's RE2; swapd uses `regex-lite`,
//! whose syntax is the same apart from Unicode classes (`\pL`), and which is linear-time too.

use regex_lite::Regex;

use super::error::{ConfigError, Reporter};
use super::typed::Fields;

/// llama-swap's default, used when the list is absent or empty: static files.
pub const DEFAULT_PATTERN: &str = r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$";

/// The compiled patterns; never empty.
#[derive(Debug, Clone)]
pub struct IgnorePaths(Vec<Regex>);

impl IgnorePaths {
    /// Whether `path` (decoded, with its leading `/`) matches any pattern anywhere, as Go's
    /// `MatchString` does.
    pub fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|pattern| pattern.is_match(path))
    }

    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Regex::as_str)
    }
}

impl Default for IgnorePaths {
    fn default() -> IgnorePaths {
        IgnorePaths(vec![
            Regex::new(DEFAULT_PATTERN).expect("the default pattern compiles")
        ])
    }
}

impl PartialEq for IgnorePaths {
    fn eq(&self, other: &IgnorePaths) -> bool {
        self.patterns().eq(other.patterns())
    }
}

/// Reads the top-level `upstream` block.
pub(crate) fn build(
    top: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<IgnorePaths, ConfigError> {
    let Some(fields) = top.section("upstream", super::schema::UPSTREAM, reporter)? else {
        return Ok(IgnorePaths::default());
    };
    let mut patterns = Vec::new();
    for (index, text) in fields
        .strings("ignorePaths", reporter)?
        .into_iter()
        .enumerate()
    {
        let pattern = Regex::new(&text).map_err(|error| {
            reporter.error(
                &fields.path("ignorePaths").index(index),
                format!("invalid regular expression '{text}': {error}"),
            )
        })?;
        patterns.push(pattern);
    }
    if patterns.is_empty() {
        return Ok(IgnorePaths::default());
    }
    Ok(IgnorePaths(patterns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_matches_static_files_only() {
        let paths = IgnorePaths::default();
        for path in [
            "/app.js",
            "/assets/index.css",
            "/favicon.ico",
            "/props.json",
            "/a/b.txt",
        ] {
            assert!(paths.matches(path), "{path}");
        }
        for path in ["/", "/v1/chat/completions", "/props", "/app.js/x", "/slots"] {
            assert!(!paths.matches(path), "{path}");
        }
    }
}
