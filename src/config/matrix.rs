//! llama-swap's `matrix` router settings: `vars`, `evict_costs` and the named DSL `sets`.
//!
//! The DSL (`a & (b | c) & +other`) is parsed and checked here, at load time, so a typo, an
//! unknown model, an undefined `+ref` or a reference cycle fails the load with the set's
//! file:line:key. Sets are compiled into expression trees whose leaves are model indices and
//! whose `+ref`s share the referenced tree (an `Arc`), never expanded into combinations: the
//! solver (`supervisor::matrix`) projects them onto the few models that matter per decision.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use super::error::{ConfigError, KeyPath, Reporter};
use super::typed::{describe, Fields};
use super::ModelConfig;

/// The compiled matrix: which models may run together, and what evicting each one costs.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixConfig {
    /// Every configured model id, sorted; expression leaves index into this list.
    pub models: Vec<String>,
    /// The sets in definition order (ties between equally cheap sets go to the earlier one).
    pub sets: Vec<MatrixSet>,
    /// Cost of evicting each model, by index into `models` (default 1).
    pub costs: Vec<u64>,
}

/// One named set: the models that may run together, as an and/or expression.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSet {
    pub name: String,
    /// The DSL as written, for logs.
    pub dsl: String,
    pub expr: Arc<Expr>,
    /// Sorted indices of every model the expression can mention (a set that cannot contain
    /// the target is skipped without evaluating it).
    pub support: Vec<u32>,
}

/// A matrix DSL expression. Each alternative of the expression is a set of models that may
/// run together; `And` takes the union of one alternative from each operand, `Or` any one.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Model(u32),
    And(Vec<Arc<Expr>>),
    Or(Vec<Arc<Expr>>),
}

impl MatrixConfig {
    /// The eviction cost of the model with id `model` (1 when unknown).
    pub fn cost_of(&self, model: &str) -> u64 {
        self.index_of(model)
            .map_or(1, |index| self.costs[index as usize])
    }

    /// The index of `model` in [`MatrixConfig::models`].
    pub fn index_of(&self, model: &str) -> Option<u32> {
        self.models
            .binary_search_by(|id| id.as_str().cmp(model))
            .ok()
            .map(|index| index as u32)
    }

    /// Whether the model with this index appears in any set.
    pub fn in_any_set(&self, index: u32) -> bool {
        self.sets
            .iter()
            .any(|set| set.support.binary_search(&index).is_ok())
    }
}

/// Whether a var name matches llama-swap's `^[a-zA-Z0-9.-]{1,32}$`.
fn valid_var_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
}

/// Reads and compiles one matrix settings mapping found at `path`.
pub(crate) fn build(
    mapping: &Mapping,
    path: &KeyPath,
    models: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    reporter: &mut Reporter<'_>,
) -> Result<MatrixConfig, ConfigError> {
    super::schema::check_keys(mapping, path, super::schema::MATRIX, reporter);
    let fields = Fields::new(mapping, path);
    let ids: Vec<String> = models.keys().cloned().collect();
    let index_of = |id: &str| ids.binary_search_by(|m| m.as_str().cmp(id)).ok();

    // vars: short name -> real model id (an alias is not accepted, as in llama-swap).
    let mut vars: BTreeMap<String, u32> = BTreeMap::new();
    if let Some(mapping) = fields.mapping("vars", reporter, "a mapping of names to model ids")? {
        let vars_path = path.key("vars");
        let var_fields = Fields::new(mapping, &vars_path);
        for key in mapping.keys() {
            let name = key.as_str().unwrap_or_default();
            let var_path = vars_path.key(name);
            if !valid_var_name(name) {
                return Err(reporter.error(
                    &var_path,
                    format!(
                        "var name '{name}' must be 1-32 characters of letters, digits, '-' or '.'"
                    ),
                ));
            }
            let target = var_fields.string(name, reporter)?.unwrap_or_default();
            let Some(index) = index_of(&target) else {
                let message = match aliases.get(&target) {
                    Some(owner) => format!(
                        "'{target}' is an alias of model '{owner}'; vars must name model ids"
                    ),
                    None => format!("var '{name}' references unknown model '{target}'"),
                };
                return Err(reporter.error(&var_path, message));
            };
            vars.insert(name.to_string(), index as u32);
        }
    }
    // An identifier is a var first, then a model id (a var wins over a same-named model).
    let resolve = |name: &str| -> Option<u32> {
        vars.get(name)
            .copied()
            .or_else(|| index_of(name).map(|i| i as u32))
    };

    let mut costs = vec![1u64; ids.len()];
    if let Some(mapping) = fields.mapping(
        "evict_costs",
        reporter,
        "a mapping of vars or models to costs",
    )? {
        let costs_path = path.key("evict_costs");
        let cost_fields = Fields::new(mapping, &costs_path);
        for key in mapping.keys() {
            let name = key.as_str().unwrap_or_default();
            let Some(index) = resolve(name) else {
                return Err(reporter.error(
                    &costs_path.key(name),
                    format!("unknown var or model '{name}'"),
                ));
            };
            let cost = cost_fields.int(name, reporter)?.unwrap_or(0);
            if cost <= 0 {
                return Err(reporter.error(
                    &costs_path.key(name),
                    format!("evict cost must be a positive whole number, found {cost}"),
                ));
            }
            costs[index as usize] = cost as u64;
        }
    }

    let sets_path = path.key("sets");
    let sets_mapping = match fields.get("sets") {
        Some(Value::Mapping(sets)) => sets,
        None => return Err(reporter.error(&sets_path, "the matrix must define at least one set")),
        Some(other) => {
            return Err(reporter.error(
                &sets_path,
                format!(
                    "expected a mapping of set names to expressions, found {}",
                    describe(other)
                ),
            ))
        }
    };
    if sets_mapping.is_empty() {
        return Err(reporter.error(&sets_path, "the matrix must define at least one set"));
    }
    // Parse every set first (YAML order is kept: it is the tie-break order), then link the
    // references in dependency order so cycles and undefined names are reported.
    let set_fields = Fields::new(sets_mapping, &sets_path);
    let mut parsed: Vec<(String, String, Parsed)> = Vec::new();
    for key in sets_mapping.keys() {
        let name = key.as_str().unwrap_or_default().to_string();
        let dsl = set_fields.string(&name, reporter)?.unwrap_or_default();
        let tree = parse(&dsl).map_err(|message| {
            reporter.error(&sets_path.key(&name), format!("{message} in '{dsl}'"))
        })?;
        parsed.push((name, dsl, tree));
    }
    let mut linked: BTreeMap<String, Arc<Expr>> = BTreeMap::new();
    let mut sets = Vec::with_capacity(parsed.len());
    for index in 0..parsed.len() {
        let expr = link(
            index,
            &parsed,
            &resolve,
            &mut linked,
            &mut Vec::new(),
            &sets_path,
            reporter,
        )?;
        let mut support = Vec::new();
        collect_support(&expr, &mut support);
        support.sort_unstable();
        support.dedup();
        let (name, dsl, _) = &parsed[index];
        sets.push(MatrixSet {
            name: name.clone(),
            dsl: dsl.clone(),
            expr,
            support,
        });
    }
    Ok(MatrixConfig {
        models: ids,
        sets,
        costs,
    })
}

fn collect_support(expr: &Expr, out: &mut Vec<u32>) {
    match expr {
        Expr::Model(index) => out.push(*index),
        Expr::And(items) | Expr::Or(items) => {
            for item in items {
                collect_support(item, out);
            }
        }
    }
}

/// Resolves the identifiers and `+ref`s of set `index`, memoised in `linked`; `stack` holds
/// the sets being linked, so a reference back into it is a cycle.
fn link(
    index: usize,
    parsed: &[(String, String, Parsed)],
    resolve: &dyn Fn(&str) -> Option<u32>,
    linked: &mut BTreeMap<String, Arc<Expr>>,
    stack: &mut Vec<String>,
    sets_path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<Arc<Expr>, ConfigError> {
    let name = &parsed[index].0;
    if let Some(done) = linked.get(name) {
        return Ok(done.clone());
    }
    stack.push(name.clone());
    let expr = link_tree(
        &parsed[index].2,
        parsed,
        resolve,
        linked,
        stack,
        sets_path,
        reporter,
    )?;
    stack.pop();
    linked.insert(name.clone(), expr.clone());
    Ok(expr)
}

fn link_tree(
    tree: &Parsed,
    parsed: &[(String, String, Parsed)],
    resolve: &dyn Fn(&str) -> Option<u32>,
    linked: &mut BTreeMap<String, Arc<Expr>>,
    stack: &mut Vec<String>,
    sets_path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<Arc<Expr>, ConfigError> {
    let current = stack.last().cloned().unwrap_or_default();
    let here = sets_path.key(&current);
    Ok(match tree {
        Parsed::Ident(name) => match resolve(name) {
            Some(index) => Arc::new(Expr::Model(index)),
            None => return Err(reporter.error(&here, format!("unknown var or model '{name}'"))),
        },
        Parsed::Ref(target) => {
            if stack.contains(target) {
                let mut cycle = stack.clone();
                cycle.push(target.clone());
                return Err(reporter.error(
                    &here,
                    format!("circular reference between sets: {}", cycle.join(" -> +")),
                ));
            }
            let Some(position) = parsed.iter().position(|(name, _, _)| name == target) else {
                return Err(reporter.error(
                    &here,
                    format!("'+{target}' references undefined set '{target}'"),
                ));
            };
            link(
                position, parsed, resolve, linked, stack, sets_path, reporter,
            )?
        }
        Parsed::And(items) | Parsed::Or(items) => {
            let mut linked_items = Vec::with_capacity(items.len());
            for item in items {
                linked_items.push(link_tree(
                    item, parsed, resolve, linked, stack, sets_path, reporter,
                )?);
            }
            Arc::new(if matches!(tree, Parsed::And(_)) {
                Expr::And(linked_items)
            } else {
                Expr::Or(linked_items)
            })
        }
    })
}

/// A parsed, not yet resolved DSL expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parsed {
    Ident(String),
    Ref(String),
    And(Vec<Parsed>),
    Or(Vec<Parsed>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Ref(String),
    And,
    Or,
    Open,
    Close,
}

fn is_ident_char(character: char) -> bool {
    character.is_alphanumeric() || matches!(character, '_' | '-' | '.')
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&character) = chars.peek() {
        if character.is_whitespace() {
            chars.next();
            continue;
        }
        match character {
            '&' => tokens.push(Token::And),
            '|' => tokens.push(Token::Or),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '+' => {
                chars.next();
                let mut name = String::new();
                while let Some(&next) = chars.peek().filter(|c| is_ident_char(**c)) {
                    name.push(next);
                    chars.next();
                }
                if name.is_empty() {
                    return Err("expected a set name after '+'".to_string());
                }
                tokens.push(Token::Ref(name));
                continue;
            }
            c if is_ident_char(c) => {
                let mut name = String::new();
                while let Some(&next) = chars.peek().filter(|c| is_ident_char(**c)) {
                    name.push(next);
                    chars.next();
                }
                tokens.push(Token::Ident(name));
                continue;
            }
            other => return Err(format!("unexpected character '{other}'")),
        }
        chars.next();
    }
    Ok(tokens)
}

/// Parses a DSL expression: `|` binds looser than `&`, parentheses group.
pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err("empty expression".to_string());
    }
    let mut position = 0;
    let tree = parse_or(&tokens, &mut position)?;
    if position < tokens.len() {
        return Err(format!("unexpected {}", describe_token(&tokens[position])));
    }
    Ok(tree)
}

fn describe_token(token: &Token) -> String {
    match token {
        Token::Ident(name) => format!("'{name}'"),
        Token::Ref(name) => format!("'+{name}'"),
        Token::And => "'&'".to_string(),
        Token::Or => "'|'".to_string(),
        Token::Open => "'('".to_string(),
        Token::Close => "')'".to_string(),
    }
}

fn parse_or(tokens: &[Token], position: &mut usize) -> Result<Parsed, String> {
    let mut items = vec![parse_and(tokens, position)?];
    while tokens.get(*position) == Some(&Token::Or) {
        *position += 1;
        items.push(parse_and(tokens, position)?);
    }
    Ok(if items.len() == 1 {
        items.remove(0)
    } else {
        Parsed::Or(items)
    })
}

fn parse_and(tokens: &[Token], position: &mut usize) -> Result<Parsed, String> {
    let mut items = vec![parse_atom(tokens, position)?];
    while tokens.get(*position) == Some(&Token::And) {
        *position += 1;
        items.push(parse_atom(tokens, position)?);
    }
    Ok(if items.len() == 1 {
        items.remove(0)
    } else {
        Parsed::And(items)
    })
}

fn parse_atom(tokens: &[Token], position: &mut usize) -> Result<Parsed, String> {
    let Some(token) = tokens.get(*position) else {
        return Err("expression ends where a model, '+set' or '(' was expected".to_string());
    };
    *position += 1;
    match token {
        Token::Ident(name) => Ok(Parsed::Ident(name.clone())),
        Token::Ref(name) => Ok(Parsed::Ref(name.clone())),
        Token::Open => {
            let inner = parse_or(tokens, position)?;
            if tokens.get(*position) != Some(&Token::Close) {
                return Err("missing closing parenthesis".to_string());
            }
            *position += 1;
            Ok(inner)
        }
        other => Err(format!("unexpected {}", describe_token(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(name: &str) -> Parsed {
        Parsed::Ident(name.to_string())
    }

    #[test]
    fn and_binds_tighter_than_or() {
        assert_eq!(
            parse("a & b | c").expect("valid"),
            Parsed::Or(vec![Parsed::And(vec![ident("a"), ident("b")]), ident("c")])
        );
        assert_eq!(
            parse("(g | q) & +base").expect("valid"),
            Parsed::And(vec![
                Parsed::Or(vec![ident("g"), ident("q")]),
                Parsed::Ref("base".to_string())
            ])
        );
        assert_eq!(
            parse("model-name.v2").expect("valid"),
            ident("model-name.v2")
        );
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        for (text, expected) in [
            ("", "empty expression"),
            ("(a", "missing closing parenthesis"),
            ("a)", "unexpected ')'"),
            ("()", "unexpected ')'"),
            ("+", "expected a set name after '+'"),
            ("a @ b", "unexpected character '@'"),
            ("a &", "expression ends"),
            ("a b", "unexpected 'b'"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
