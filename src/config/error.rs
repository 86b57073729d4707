//! Errors and warnings of config loading, and the key paths they name.
//!
//! Every problem found in `config.yaml` is reported as `file:line:column: key.path: problem`,
//! so a user can jump straight to the offending line. The key path is kept as segments while
//! loading (model ids often contain dots) and only rendered to text for messages.

use std::fmt;
use std::path::{Path, PathBuf};

use super::scan::Locator;

/// A config file that cannot be loaded: where the problem is and what it is.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The config file the problem was found in.
    pub path: PathBuf,
    /// One-based line of the problem, when it could be located.
    pub line: Option<usize>,
    /// One-based column of the problem, when it could be located.
    pub column: Option<usize>,
    /// Dotted key path of the offending setting, e.g. `models.qwen.cmd`; empty when the problem
    /// concerns the file as a whole (a YAML syntax error, an unreadable file).
    pub key: String,
    /// What is wrong, in a short lowercase sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(formatter, ":{line}")?;
            if let Some(column) = self.column {
                write!(formatter, ":{column}")?;
            }
        }
        formatter.write_str(": ")?;
        if !self.key.is_empty() {
            write!(formatter, "{}: ", self.key)?;
        }
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// The location of a value inside the YAML document, e.g. `models` → `qwen` → `aliases` → `[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyPath {
    segments: Vec<Segment>,
}

impl KeyPath {
    /// The document root, which has no segments.
    pub(crate) fn root() -> KeyPath {
        KeyPath::default()
    }

    /// Builds a path from segments (used by the locator and in tests).
    pub(crate) fn from_segments(segments: Vec<Segment>) -> KeyPath {
        KeyPath { segments }
    }

    /// The path of the value stored under `key` in the mapping at this path.
    pub(crate) fn key(&self, key: &str) -> KeyPath {
        let mut segments = self.segments.clone();
        segments.push(Segment::Key(key.to_string()));
        KeyPath { segments }
    }

    /// The path of the `index`th item of the sequence at this path.
    pub(crate) fn index(&self, index: usize) -> KeyPath {
        let mut segments = self.segments.clone();
        segments.push(Segment::Index(index));
        KeyPath { segments }
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => formatter.write_str(key)?,
                Segment::Key(key) => write!(formatter, ".{key}")?,
                Segment::Index(index) => write!(formatter, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Turns key paths into located errors and collects warnings while a config is loaded. With
/// several files (`--config-dir`), a key is located in the file that defines it most deeply.
pub(crate) struct Reporter<'a> {
    files: Vec<(&'a Path, &'a Locator)>,
    warnings: Vec<String>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a Path, locator: &'a Locator) -> Reporter<'a> {
        Reporter::multi(vec![(file, locator)])
    }

    /// A reporter over several files, in load order (the first wins a tie).
    pub(crate) fn multi(files: Vec<(&'a Path, &'a Locator)>) -> Reporter<'a> {
        Reporter {
            files,
            warnings: Vec::new(),
        }
    }

    /// An error about the value at `path`, located at that key or, failing that, at the
    /// closest enclosing key the locator can find (a missing key is reported at its parent).
    pub(crate) fn error(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        let segments = path.segments();
        let mut best: Option<(usize, &Path, (usize, usize))> = None;
        for (file, locator) in &self.files {
            let found = (1..=segments.len())
                .rev()
                .find_map(|length| locator.exact(&segments[..length]).map(|at| (length, at)));
            if let Some((depth, at)) = found {
                if best.is_none_or(|(best_depth, _, _)| depth > best_depth) {
                    best = Some((depth, file, at));
                }
            }
        }
        let file = best.map_or_else(
            || {
                self.files
                    .first()
                    .map(|(file, _)| *file)
                    .unwrap_or(Path::new(""))
            },
            |(_, file, _)| file,
        );
        ConfigError {
            path: file.to_path_buf(),
            line: best.map(|(_, _, (line, _))| line),
            column: best.map(|(_, _, (_, column))| column),
            key: path.to_string(),
            message: message.into(),
        }
    }

    /// Records a warning in the same `file:line:column: key: message` shape as errors.
    pub(crate) fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let warning = self.error(path, message).to_string();
        self.warnings.push(warning);
    }

    pub(crate) fn into_warnings(self) -> Vec<String> {
        self.warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_column_key_and_problem() {
        let error = ConfigError {
            path: PathBuf::from("config.yaml"),
            line: Some(12),
            column: Some(5),
            key: "models.qwen.cmd".to_string(),
            message: "unknown macro '${foo}'".to_string(),
        };
        assert_eq!(
            error.to_string(),
            "config.yaml:12:5: models.qwen.cmd: unknown macro '${foo}'"
        );
    }

    #[test]
    fn display_omits_unknown_parts() {
        let error = ConfigError {
            path: PathBuf::from("c.yaml"),
            line: None,
            column: None,
            key: String::new(),
            message: "cannot read".to_string(),
        };
        assert_eq!(error.to_string(), "c.yaml: cannot read");
    }

    #[test]
    fn key_paths_render_dots_and_indices() {
        let path = KeyPath::root()
            .key("models")
            .key("a.b")
            .key("aliases")
            .index(2);
        assert_eq!(path.to_string(), "models.a.b.aliases[2]");
    }
}
