//! The table of invalid configs: each must fail naming its key path, its problem and its line.

use super::*;

/// Each case: YAML text, expected key path, a fragment of the message, expected line.
const INVALID: &[(&str, &str, &str, Option<usize>)] = &[
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    ttl: abc\n",
        "models.m.ttl",
        "expected a whole number, found 'abc'",
        Some(4),
    ),
    ("models: []\n", "models", "expected a mapping of model ids", Some(1)),
    ("- a\n- b\n", "", "expected a mapping of settings at the top level", None),
    ("models:\n  m: srv\n", "models.m", "expected a mapping of model settings, found 'srv'", Some(2)),
    ("models:\n  m:\n    cmd: [srv]\n", "models.m.cmd", "expected a string, found a list", Some(3)),
    ("models:\n  m:\n    proxy: http://h:1\n", "models.m.cmd", "cmd is required", Some(2)),
    (
        "models:\n  m:\n    cmd: \"# only a comment\"\n    proxy: http://h:1\n",
        "models.m.cmd",
        "cmd is empty",
        Some(3),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT} 'open\n",
        "models.m.cmd",
        "unterminated single quote",
        Some(3),
    ),
    (
        "models:\n  m:\n    cmd: srv ${foo} --port ${PORT}\n",
        "models.m.cmd",
        "unknown macro '${foo}'",
        Some(3),
    ),
    ("macros:\n  PORT: 1\n", "macros.PORT", "is reserved", Some(2)),
    ("macros:\n  PID: x\n", "macros.PID", "is reserved", Some(2)),
    ("macros:\n  MODEL_ID: x\n", "macros.MODEL_ID", "is reserved", Some(2)),
    ("macros:\n  bad.name: x\n", "macros.bad.name", "must match ^[a-zA-Z0-9_-]+$", Some(2)),
    ("macros:\n  list: [1, 2]\n", "macros.list", "must be a string, number or boolean", Some(2)),
    (
        "models:\n  m:\n    macros:\n      me: ${me}\n    cmd: x\n",
        "models.m.macros.me",
        "refers to itself",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv\n    proxy: http://localhost:${PORT}\n",
        "models.m.proxy",
        "proxy uses ${PORT} but cmd does not",
        Some(4),
    ),
    ("models:\n  m:\n    cmd: srv\n", "models.m.proxy", "cmd does not use ${PORT}", Some(2)),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    ttl: -2\n",
        "models.m.ttl",
        "must be -1 (use globalTTL), 0 (never unload)",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    env:\n      - A=1\n      - NOEQUALS\n",
        "models.m.env[1]",
        "expected NAME=VALUE, found 'NOEQUALS'",
        Some(6),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n    aliases: [x]\n  b:\n    cmd: srv --port ${PORT}\n    aliases:\n      - x\n",
        "models.b.aliases[0]",
        "alias 'x' is already used by model 'a'",
        Some(8),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n  b:\n    cmd: srv --port ${PORT}\n    aliases:\n      - a\n",
        "models.b.aliases[0]",
        "alias 'a' is also the id of a model",
        Some(7),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n  b:\n    cmd: srv --port ${PORT}\n    filters:\n      setParamsByID:\n        a: {x: 1}\n",
        "models.b.filters.setParamsByID.a",
        "key 'a' is the id of another model",
        Some(8),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n    aliases: [fast]\n  b:\n    cmd: srv --port ${PORT}\n    filters:\n      setParamsByID:\n        fast: {x: 1}\n",
        "models.b.filters.setParamsByID.fast",
        "key 'fast' is already an alias of model 'a'",
        Some(9),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n    filters:\n      setParamsByID:\n        a-x: {}\n        ${MODEL_ID}-x: {}\n",
        "models.a.filters.setParamsByID.${MODEL_ID}-x",
        "expands to 'a-x', which is already a key here",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g:\n    members:\n      - a\n      - ghost\n",
        "groups.g.members[1]",
        "unknown model 'ghost'",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\ngroups:\n  g:\n    members:\n      - al\n",
        "groups.g.members[0]",
        "'al' is an alias of model 'a'; group members must be model ids",
        Some(6),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g1:\n    members: [a]\n  g2:\n    members:\n      - a\n",
        "groups.g2.members[0]",
        "model 'a' is already a member of group 'g1'",
        Some(8),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g:\n    members:\n      - a\n      - a\n",
        "groups.g.members[1]",
        "model 'a' is listed twice in group 'g'",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  (default):\n    members: [a]\n",
        "groups.(default)",
        "is reserved for ungrouped models",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {members: [a]}\nrouting:\n  router:\n    use: group\n",
        "groups",
        "cannot be combined with `routing.router`",
        Some(3),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\npeers:\n  remote:\n    proxy: http://x\n",
        "peers.remote.models",
        "a peer needs a non-empty list of the models it serves",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nprofiles:\n  p: {pins: {x: nope}}\n",
        "profiles.p.pins.x",
        "pin 'x' references unknown model 'nope'",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nprofiles:\n  old:\n    - a\n    - b\n",
        "profiles.old",
        "the legacy list syntax is no longer supported",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nprofiles:\n  p:\n    description: empty\n",
        "profiles.p.pins",
        "pins must contain at least one entry",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  a: {strategy: pin, targets: [b]}\n",
        "selectors.a",
        "conflicts with model id 'a'",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  al: {strategy: pin, targets: [b]}\n",
        "selectors.al",
        "conflicts with an alias of model 'a'",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    targets: [b]\n",
        "selectors.s.strategy",
        "strategy is required",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: fast\n    targets: [b]\n",
        "selectors.s.strategy",
        "unknown strategy 'fast' (valid: warm, pin, spillover)",
        Some(6),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: pin\n    targets: []\n",
        "selectors.s.targets",
        "at least one entry",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: pin\n    targets:\n      - zz\n",
        "selectors.s.targets[0]",
        "unknown model 'zz'",
        Some(8),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s1: {strategy: pin, targets: [a]}\n  s2:\n    strategy: pin\n    targets:\n      - s1\n",
        "selectors.s2.targets[0]",
        "selector chaining is not supported",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {swap: false, members: [a, b]}\nselectors:\n  s:\n    strategy: spillover\n    targets:\n      - a\n      - al\n",
        "selectors.s.targets[1]",
        "targets contain model 'a' twice",
        Some(11),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n",
        "selectors.s.targets",
        "is not in a routing group",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {members: [a, b]}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n",
        "selectors.s.targets",
        "must share a group with swap: false",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  sets: {x: a, y: b}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n",
        "selectors.s.targets",
        "must all appear together in one matrix set",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {swap: false, members: [a, b]}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n    settings: {spillover: 0}\n",
        "selectors.s.settings.spillover",
        "spillover must be 1 or more",
        Some(10),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  sets: {s: zz}\n",
        "matrix.sets.s",
        "unknown var or model 'zz'",
        Some(4),
    ),
    (
        "routing:\n  router:\n    use: matrix\n",
        "routing.router.settings",
        "routing.router.settings.matrix is required",
        Some(2),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"a & +s2\"\n          s2: \"+s1\"\n",
        "routing.router.settings.matrix.sets.s2",
        "circular reference between sets: s1 -> +s2 -> +s1",
        Some(10),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"a | +nope\"\n",
        "routing.router.settings.matrix.sets.s1",
        "'+nope' references undefined set 'nope'",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"(a\"\n",
        "routing.router.settings.matrix.sets.s1",
        "missing closing parenthesis in '(a'",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets: {}\n",
        "routing.router.settings.matrix.sets",
        "at least one set",
        Some(8),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      groups: {g: {members: [a]}}\n      matrix:\n        sets: {s: a}\n",
        "routing.router.settings.groups",
        "groups and matrix cannot be used together",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups: {g: {members: [a]}}\nmatrix:\n  sets: {s: a}\n",
        "matrix",
        "groups and matrix cannot be used together",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  vars: {x: nope}\n  sets: {s: a}\n",
        "matrix.vars.x",
        "var 'x' references unknown model 'nope'",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  vars: {\"bad name\": a}\n  sets: {s: a}\n",
        "matrix.vars.bad name",
        "must be 1-32 characters",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  evict_costs: {a: 0}\n  sets: {s: a}\n",
        "matrix.evict_costs.a",
        "must be a positive whole number",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  evict_costs: {q: 3}\n  sets: {s: a}\n",
        "matrix.evict_costs.q",
        "unknown var or model 'q'",
        Some(4),
    ),
    (
        "routing:\n  router:\n    use: random\n",
        "routing.router.use",
        "unknown router 'random'",
        Some(3),
    ),
    (
        "routing:\n  scheduler:\n    use: priority\n",
        "routing.scheduler.use",
        "unknown scheduler 'priority' (valid: fifo)",
        Some(3),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  scheduler:\n    settings:\n      fifo:\n        priority:\n          ghost: 1\n",
        "routing.scheduler.settings.fifo.priority.ghost",
        "unknown model 'ghost'",
        Some(8),
    ),
    ("logToStdout: stderr\n", "logToStdout", "must be one of proxy, upstream, both, none", Some(1)),
    ("startPort: 0\n", "startPort", "must be between 1 and 65535, found 0", Some(1)),
    ("startPort: 70000\n", "startPort", "must be between 1 and 65535", Some(1)),
    ("globalTTL: -1\n", "globalTTL", "must be 0 or more seconds, found -1", Some(1)),
    ("unloadTimeout: -5\n", "unloadTimeout", "must be 0 or more seconds", Some(1)),
    ("metricsMaxInMemory: -1\n", "metricsMaxInMemory", "must be 0 or more, found -1", Some(1)),
    ("apiKeys:\n  - good\n  - \"has space\"\n", "apiKeys[1]", "must not contain spaces", Some(3)),
    ("apiKeys:\n  - \"\"\n", "apiKeys[0]", "must not be empty", Some(2)),
    ("apiKeys: [\"${nokey}\"]\n", "apiKeys[0]", "unknown macro '${nokey}'", Some(1)),
    (
        "models:\n  m:\n    cmd: srv\n    proxy: http://h:1\n    name: on ${PORT}\n",
        "models.m.name",
        "unknown macro '${PORT}' (a port is only assigned to models whose cmd uses ${PORT})",
        Some(5),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    metadata:\n      a:\n        b: ${nope}\n",
        "models.m.metadata.a.b",
        "unknown macro '${nope}'",
        Some(6),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    unlisted: maybe\n",
        "models.m.unlisted",
        "expected true or false, found 'maybe'",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    concurrencyLimit: -1\n",
        "models.m.concurrencyLimit",
        "must be 0 (the default of 10) or more",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv\n    proxy: localhost:8080\n",
        "models.m.proxy",
        "expected an http:// or https:// URL",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    capabilities:\n      in: [text, video]\n",
        "models.m.capabilities.in[1]",
        "invalid modality 'video', must be one of: text, audio, image",
        Some(5),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    capabilities:\n      context: -1\n",
        "models.m.capabilities.context",
        "must be 0 or more tokens, found -1",
        Some(5),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    capabilities:\n      tools: yes please\n",
        "models.m.capabilities.tools",
        "expected true or false",
        Some(5),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    capabilities: [text]\n",
        "models.m.capabilities",
        "expected a mapping, found a list",
        Some(4),
    ),
    (
        "upstream:\n  ignorePaths:\n    - '\\.js$'\n    - 'a(b'\n",
        "upstream.ignorePaths[1]",
        "invalid regular expression 'a(b'",
        Some(4),
    ),
    ("upstream: [x]\n", "upstream", "expected a mapping, found a list", Some(1)),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    compat:\n      ignoreWebsockets: sometimes\n",
        "models.m.compat.ignoreWebsockets",
        "expected true or false",
        Some(5),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    metadata: [1]\n",
        "models.m.metadata",
        "expected a mapping, found a list",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    filters:\n      stripParams: [a]\n",
        "models.m.filters.stripParams",
        "expected a string, found a list",
        Some(5),
    ),
    ("swapd:\n  maxBodyBytes: 0\n", "swapd.maxBodyBytes", "must be greater than 0, found 0", Some(2)),
    ("swapd:\n  headerTimeout: soon\n", "swapd.headerTimeout", "expected a whole number", Some(2)),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    aliases: fast\n",
        "models.m.aliases",
        "expected a list of strings, found 'fast'",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: x ${env.SWAPD_TEST_UNSET}\n",
        "models.m.cmd",
        "environment variable 'SWAPD_TEST_UNSET' is not set",
        Some(3),
    ),
    ("models:\n  m:\n    cmd: [unclosed\n", "", "invalid YAML", Some(4)),
    ("a: 1\na: 2\n", "", "invalid YAML: duplicate entry with key \"a\"", Some(1)),
];

#[test]
fn invalid_configs_name_key_problem_and_line() {
    assert!(INVALID.len() >= 20);
    for (text, key, fragment, line) in INVALID {
        let error = load_err(text);
        assert_eq!(&error.key, key, "wrong key for {text:?}: {error}");
        assert!(
            error.message.contains(fragment),
            "message for {text:?} lacks {fragment:?}: {error}"
        );
        assert_eq!(&error.line, line, "wrong line for {text:?}: {error}");
        let rendered = error.to_string();
        assert!(rendered.starts_with("config.yaml"), "{rendered}");
        if !key.is_empty() {
            assert!(rendered.contains(&format!(" {key}: ")), "{rendered}");
        }
    }
}
