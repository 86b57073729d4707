//! Several config sources merged into one: `--config FILE` and/or `--config-dir DIR`
//! (llama-swap §1.10).
//!
//! The file comes first, then every `*.yml`/`*.yaml` directly in DIR in sorted order. Each is
//! read, `${env.X}`-substituted and parsed on its own, then the trees are merged: mappings
//! merge key by key, sequences concatenate, equal scalars are fine, a null yields to a value,
//! and anything else (two different scalars, a mapping against a list) is an error naming both
//! files. The "identity maps" (`models`, `groups`, `profiles`, `selectors`, `peers`, `matrix`
//! and the router's `groups`/`matrix`) may not define the same key in two files. The merged
//! tree then goes through the usual macro, port and validation steps, and later errors are
//! located in whichever file defines the offending key.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::error::{ConfigError, KeyPath, Reporter, Segment};
use super::scan::{self, Locator};
use super::{typed, Loaded};

/// Where the config comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub dir: Option<PathBuf>,
}

impl Sources {
    /// A single config file.
    pub fn file(path: impl Into<PathBuf>) -> Sources {
        Sources {
            file: Some(path.into()),
            dir: None,
        }
    }

    /// For logs: `config.yaml + conf.d/`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(file) = &self.file {
            parts.push(file.display().to_string());
        }
        if let Some(dir) = &self.dir {
            parts.push(format!("{}/", dir.display()));
        }
        parts.join(" + ")
    }

    /// The files to load, in order: the file, then DIR's YAML files sorted by name.
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files: Vec<PathBuf> = self.file.iter().cloned().collect();
        if let Some(dir) = &self.dir {
            let fail = |message: String| ConfigError {
                path: dir.clone(),
                line: None,
                column: None,
                key: String::new(),
                message,
            };
            let entries = std::fs::read_dir(dir)
                .map_err(|error| fail(format!("cannot read the config directory: {error}")))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    matches!(
                        path.extension().and_then(|ext| ext.to_str()),
                        Some("yml" | "yaml")
                    ) && path.is_file()
                })
                .collect();
            found.sort();
            if let Some(file) = &self.file {
                let canonical = |path: &Path| std::fs::canonicalize(path).ok();
                let file_canonical = canonical(file);
                if file_canonical.is_some()
                    && found.iter().any(|path| canonical(path) == file_canonical)
                {
                    return Err(fail(format!(
                        "the config file {} is inside the config directory; it would be loaded twice",
                        file.display()
                    )));
                }
            }
            if found.is_empty() && self.file.is_none() {
                return Err(fail(
                    "the config directory has no *.yml or *.yaml files".to_string(),
                ));
            }
            files.extend(found);
        }
        Ok(files)
    }
}

/// Reads every source and loads the merged configuration, taking `${env.X}` from the process
/// environment.
pub fn load_sources(sources: &Sources) -> Result<Loaded, ConfigError> {
    let mut texts = Vec::new();
    for path in sources.files()? {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError {
            path: path.clone(),
            line: None,
            column: None,
            key: String::new(),
            message: format!("cannot read the config file: {error}"),
        })?;
        texts.push((path, text));
    }
    let environment =
        |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    parse_many(&texts, &environment)
}

/// Loads the merged configuration from `(path, text)` pairs in load order.
pub fn parse_many(
    texts: &[(PathBuf, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut substituted = Vec::with_capacity(texts.len());
    for (path, text) in texts {
        super::check_nesting(text, path)?;
        substituted.push(super::env::substitute(text, path, env)?);
    }
    let scans: Vec<scan::Scan<'_>> = substituted.iter().map(|text| scan::scan(text)).collect();
    let locators: Vec<Locator> = scans.iter().map(Locator::new).collect();
    let mut documents = Vec::with_capacity(texts.len());
    for (index, (path, _)) in texts.iter().enumerate() {
        let reporter = Reporter::new(path, &locators[index]);
        let mut document: serde_yaml::Value = serde_yaml::from_str(&substituted[index])
            .map_err(|error| super::syntax_error(path, &error))?;
        document
            .apply_merge()
            .map_err(|error| super::syntax_error(path, &error))?;
        documents.push(typed::normalize(document, &KeyPath::root(), &reporter)?);
    }
    let mut merged = Value::Null;
    for index in 0..documents.len() {
        let context = MergeContext {
            texts,
            locators: &locators,
            documents: &documents,
            index,
        };
        merged = merge(merged, documents[index].clone(), &KeyPath::root(), &context)?;
    }
    let files: Vec<(&Path, &Locator)> = texts
        .iter()
        .map(|(path, _)| path.as_path())
        .zip(locators.iter())
        .collect();
    let mut reporter = Reporter::multi(files);
    let config = typed::build(merged, &mut reporter)?;
    Ok(Loaded {
        config,
        warnings: reporter.into_warnings(),
    })
}

/// What a merge error needs to name the files involved.
struct MergeContext<'a> {
    texts: &'a [(PathBuf, String)],
    locators: &'a [Locator],
    documents: &'a [Value],
    /// The file being merged in.
    index: usize,
}

impl MergeContext<'_> {
    /// An error located in the file being merged, naming the earlier file that set `path`.
    fn conflict(&self, path: &KeyPath, problem: &str) -> ConfigError {
        let earlier = (0..self.index)
            .find(|&i| lookup(&self.documents[i], path.segments()).is_some())
            .map(|i| {
                let (file, _) = &self.texts[i];
                match self.locators[i].exact(path.segments()) {
                    Some((line, _)) => format!("{}:{line}", file.display()),
                    None => file.display().to_string(),
                }
            })
            .unwrap_or_else(|| "an earlier file".to_string());
        let (file, _) = &self.texts[self.index];
        let position = (1..=path.segments().len())
            .rev()
            .find_map(|length| self.locators[self.index].exact(&path.segments()[..length]));
        ConfigError {
            path: file.clone(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            key: path.to_string(),
            message: format!("{problem}; already set in {earlier}"),
        }
    }
}

fn lookup<'v>(value: &'v Value, segments: &[Segment]) -> Option<&'v Value> {
    let Some((first, rest)) = segments.split_first() else {
        return Some(value);
    };
    let next = match (first, value) {
        (Segment::Key(key), Value::Mapping(mapping)) => mapping.get(key.as_str())?,
        (Segment::Index(index), Value::Sequence(items)) => items.get(*index)?,
        _ => return None,
    };
    lookup(next, rest)
}

/// Whether the mapping at `path` is one whose keys are identities that only one file may
/// define.
fn is_identity_map(path: &KeyPath) -> bool {
    let keys: Vec<&str> = path
        .segments()
        .iter()
        .map(|segment| match segment {
            Segment::Key(key) => key.as_str(),
            Segment::Index(_) => "[]",
        })
        .collect();
    matches!(
        keys.as_slice(),
        ["models" | "groups" | "profiles" | "selectors" | "peers" | "matrix"]
            | ["routing", "router", "settings", "groups" | "matrix"]
    )
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) | Value::Number(_) | Value::String(_) => "a scalar",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn merge(
    base: Value,
    next: Value,
    path: &KeyPath,
    context: &MergeContext<'_>,
) -> Result<Value, ConfigError> {
    match (base, next) {
        (Value::Null, next) => Ok(next),
        (base, Value::Null) => Ok(base),
        (Value::Mapping(mut base), Value::Mapping(next)) => {
            let identity = is_identity_map(path);
            for (key, value) in next {
                let name = key.as_str().unwrap_or_default().to_string();
                let item_path = path.key(&name);
                match base.remove(&key) {
                    None => {
                        base.insert(key, value);
                    }
                    Some(existing) => {
                        if identity {
                            return Err(context.conflict(
                                &item_path,
                                &format!("'{name}' is defined in more than one file"),
                            ));
                        }
                        let merged = merge(existing, value, &item_path, context)?;
                        base.insert(key, merged);
                    }
                }
            }
            Ok(Value::Mapping(base))
        }
        (Value::Sequence(mut base), Value::Sequence(next)) => {
            base.extend(next);
            Ok(Value::Sequence(base))
        }
        (base, next) if base == next => Ok(base),
        (base, next) if kind(&base) == kind(&next) => Err(context.conflict(
            path,
            &format!(
                "{} differs from the earlier value {}",
                typed::describe(&next),
                typed::describe(&base)
            ),
        )),
        (base, next) => Err(context.conflict(
            path,
            &format!(
                "{} here but {} in an earlier file",
                kind(&next),
                kind(&base)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let texts: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(path, text)| (PathBuf::from(path), text.to_string()))
            .collect();
        parse_many(&texts, &|_| None)
    }

    const MAIN: &str =
        "startPort: 9000\napiKeys: [k1]\nmodels:\n  a:\n    cmd: srv --port ${PORT}\n";

    #[test]
    fn maps_merge_and_sequences_concatenate() {
        let loaded = load(&[
            ("config.yaml", MAIN),
            (
                "d/b.yaml",
                "apiKeys: [k2]\nstartPort: 9000\nmodels:\n  b:\n    cmd: srv --port ${PORT}\n",
            ),
        ])
        .expect("valid");
        assert_eq!(loaded.config.api_keys, vec!["k1", "k2"]);
        assert_eq!(
            loaded.config.models.keys().collect::<Vec<_>>(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn null_yields_to_a_value() {
        let loaded = load(&[
            ("a.yaml", MAIN),
            ("b.yaml", "globalTTL: ~\n"),
            ("c.yaml", "globalTTL: 5\n"),
        ])
        .expect("valid");
        assert_eq!(loaded.config.global_ttl.as_secs(), 5);
    }

    #[test]
    fn differing_scalars_name_both_files() {
        let error = load(&[("config.yaml", MAIN), ("d/b.yaml", "\nstartPort: 9100\n")])
            .expect_err("conflict");
        assert_eq!(
            error.to_string(),
            "d/b.yaml:2:1: startPort: 9100 differs from the earlier value 9000; already set in config.yaml:1"
        );
    }

    #[test]
    fn kind_mismatch_is_an_error() {
        let error = load(&[("config.yaml", MAIN), ("d/b.yaml", "apiKeys: {x: 1}\n")])
            .expect_err("conflict");
        assert!(
            error
                .to_string()
                .starts_with("d/b.yaml:1:1: apiKeys: a mapping here but a list"),
            "{error}"
        );
    }

    #[test]
    fn identity_maps_may_not_repeat_a_key() {
        let error = load(&[
            ("config.yaml", MAIN),
            ("d/b.yaml", "models:\n  a:\n    cmd: other --port ${PORT}\n"),
        ])
        .expect_err("duplicate model");
        assert_eq!(
            error.to_string(),
            "d/b.yaml:2:3: models.a: 'a' is defined in more than one file; already set in config.yaml:4"
        );
        let error = load(&[
            ("x.yaml", "profiles:\n  p: {pins: {q: a}}\n"),
            ("y.yaml", MAIN),
            ("z.yaml", "profiles:\n  p: {pins: {r: a}}\n"),
        ])
        .expect_err("duplicate profile");
        assert!(
            error.to_string().contains("z.yaml:2:3: profiles.p:"),
            "{error}"
        );
    }

    #[test]
    fn later_errors_are_located_in_the_defining_file() {
        let error = load(&[
            ("config.yaml", MAIN),
            (
                "d/b.yaml",
                "models:\n  b:\n    cmd: srv --port ${PORT}\n    ttl: -5\n",
            ),
        ])
        .expect_err("bad ttl");
        assert!(
            error.to_string().starts_with("d/b.yaml:4:5: models.b.ttl:"),
            "{error}"
        );
    }
}
