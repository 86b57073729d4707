//! What runs together and how names resolve: groups (both forms), the scheduler, aliases and
//! `setParamsByID` keys, preload.

use super::*;

#[test]
fn groups_in_legacy_form_with_default_group() {
    let loaded = load_ok(
        "\
models:
  a: {cmd: \"srv --port ${PORT}\"}
  b: {cmd: \"srv --port ${PORT}\"}
  c: {cmd: \"srv --port ${PORT}\"}
  d: {cmd: \"srv --port ${PORT}\"}
groups:
  zz:
    members: [d]
  embed:
    swap: false
    exclusive: false
    persistent: true
    members: [c, a]
",
    );
    let groups = &loaded.config.groups;
    assert_eq!(
        groups
            .iter()
            .map(|group| group.id.as_str())
            .collect::<Vec<_>>(),
        ["embed", "zz", DEFAULT_GROUP_ID]
    );
    assert_eq!(
        groups[0],
        GroupConfig {
            id: "embed".to_string(),
            swap: false,
            exclusive: false,
            persistent: true,
            members: vec!["c".to_string(), "a".to_string()],
        }
    );
    assert!(groups[1].swap && groups[1].exclusive && !groups[1].persistent);
    assert_eq!(groups[2].members, ["b"]);
    assert_eq!(
        loaded.config.group_of("a").map(|group| group.id.as_str()),
        Some("embed")
    );
    assert_eq!(
        loaded.config.group_of("b").map(|group| group.id.as_str()),
        Some(DEFAULT_GROUP_ID)
    );
    assert!(loaded.config.group_of("nope").is_none());
}

#[test]
fn groups_in_routing_form_and_no_default_group_when_all_grouped() {
    let loaded = load_ok(
        "\
models:
  a: {cmd: \"srv --port ${PORT}\"}
routing:
  router:
    use: group
    settings:
      groups:
        only:
          members: [a]
  scheduler:
    use: fifo
",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.groups.len(), 1);
    assert_eq!(loaded.config.groups[0].id, "only");
}

#[test]
fn scheduler_priorities_are_ignored_with_a_warning() {
    let loaded = load_ok(
        "\
models:
  a: {cmd: \"srv --port ${PORT}\", aliases: [x]}
routing:
  scheduler:
    settings:
      fifo:
        priority: {x: 5}
",
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .starts_with("config.yaml:7:9: routing.scheduler.settings.fifo.priority: "),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn aliases_and_set_params_by_id_keys() {
    let loaded = load_ok(
        "\
models:
  qwen:
    cmd: srv --port ${PORT}
    aliases: [q, gpt-4]
    filters:
      stripParams: \"top_k, model ,temperature,top_k\"
      setParams: {model: no, temperature: 0.2}
      setParamsByID:
        qwen: {mode: plain}
        q: {mode: short}
        ${MODEL_ID}-thinking:
          think: true
          model: ignored
  other:
    cmd: srv --port ${PORT}
    filters:
      strip_params: a,b
",
    );
    let config = &loaded.config;
    let qwen = &config.models["qwen"];
    assert_eq!(qwen.aliases, ["q", "gpt-4", "qwen-thinking"]);
    assert_eq!(qwen.filters.strip_params, ["temperature", "top_k"]);
    assert_eq!(
        qwen.filters.set_params,
        json!({"temperature": 0.2})
            .as_object()
            .cloned()
            .expect("object")
    );
    assert_eq!(
        qwen.filters.set_params_by_id["qwen-thinking"],
        json!({"think": true}).as_object().cloned().expect("object")
    );
    assert_eq!(qwen.filters.set_params_by_id.len(), 3);
    assert_eq!(config.models["other"].filters.strip_params, ["a", "b"]);
    let expected: Vec<(&str, &str)> =
        vec![("gpt-4", "qwen"), ("q", "qwen"), ("qwen-thinking", "qwen")];
    assert_eq!(
        config
            .aliases
            .iter()
            .map(|(alias, id)| (alias.as_str(), id.as_str()))
            .collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn preload_resolves_aliases_and_drops_unknown_names() {
    let loaded = load_ok(
        "\
models:
  m: {cmd: \"srv --port ${PORT}\", aliases: [mm]}
hooks:
  on_startup:
    preload: [\" mm \", \"\", ghost, m]
",
    );
    assert_eq!(loaded.config.preload, ["m", "m"]);
    assert_eq!(
        loaded.warnings,
        ["config.yaml:5:5: hooks.on_startup.preload[2]: unknown model 'ghost'; it is not preloaded"]
    );
}
