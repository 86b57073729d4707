//! The `peers` section: other OpenAI-compatible servers (usually another swapd or llama-swap
//! on another machine) whose models this swapd routes to without starting anything.
//!
//! llama-swap's rules, checked here at load time so that routing is a plain table lookup:
//! every peer model is addressable by its fully qualified name `<peer>/<model>` (the FQN); a
//! bare `<model>` routes to a peer only when exactly one peer lists it and no FQN spells it;
//! an FQN is reserved, so a local model id, alias, selector id or profile pin with the same
//! text is a load error naming both. Local ids and aliases take precedence over bare peer names; that is decided where
//! requests are routed (`Config::resolve_model` first, then [`Peers::resolve`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::error::{ConfigError, KeyPath, Reporter};
use super::schema;
use super::typed::{build_filters, describe, Fields};
use super::{Filters, ModelConfig, ProfileConfig, SelectorConfig};

/// How long a connection to a peer may take before the request fails with a 502. A peer that
/// is down should fail fast rather than hold a client for llama-swap's 30 s.
pub const DEFAULT_PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The keys of one peer.
const PEER_KEYS: &[&str] = &["proxy", "apiKey", "models", "filters", "timeouts"];

/// One peer server.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub id: String,
    /// The base URL requests are appended to, without a trailing `/` (e.g.
    /// `http://10.0.0.2:8080` or `http://gpu/llm`).
    pub proxy: String,
    /// The peer's model names as the peer knows them, duplicates removed, in config order.
    pub models: Vec<String>,
    /// Sent as `Authorization: Bearer <key>` and `x-api-key` instead of the client's own.
    pub api_key: Option<String>,
    pub filters: Filters,
    /// `timeouts.connect` in seconds (default 2).
    pub connect_timeout: Duration,
    /// `timeouts.responseHeader`: the longest wait for any read from the peer; `None` uses
    /// `swapd.upstreamTimeout`, as for local models.
    pub read_timeout: Option<Duration>,
}

impl PeerConfig {
    /// `host:port` of the peer, for messages (the proxy URL without scheme and path).
    pub fn address(&self) -> &str {
        let rest = self.proxy.strip_prefix("http://").unwrap_or(&self.proxy);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// Where a requested name goes: which peer, and the model name the peer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub peer: String,
    pub model: String,
}

/// Every peer and the routing table built from them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Peers {
    pub peers: BTreeMap<String, PeerConfig>,
    /// Requested name (FQN, or bare name listed by exactly one peer) to route.
    routes: BTreeMap<String, PeerRoute>,
}

impl Peers {
    /// The peer and peer-side model name a requested name refers to. Callers try local model
    /// ids and aliases first: those take precedence over bare peer names.
    pub fn resolve(&self, name: &str) -> Option<(&PeerConfig, &str)> {
        let route = self.routes.get(name)?;
        let peer = self.peers.get(&route.peer)?;
        Some((peer, route.model.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Builds the table from peers that were already checked one by one.
    fn new(peers: BTreeMap<String, PeerConfig>) -> Peers {
        let mut routes = BTreeMap::new();
        let mut bare: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for peer in peers.values() {
            for model in &peer.models {
                routes.insert(
                    fqn(&peer.id, model),
                    PeerRoute {
                        peer: peer.id.clone(),
                        model: model.clone(),
                    },
                );
                bare.entry(model).or_default().push(&peer.id);
            }
        }
        // A bare name listed by two peers is ambiguous and routes nowhere; one that spells
        // another peer's FQN is that FQN (FQNs take precedence).
        let mut bare_routes = Vec::new();
        for (model, listed_by) in bare {
            if listed_by.len() == 1 && !routes.contains_key(model) {
                bare_routes.push((
                    model.to_string(),
                    PeerRoute {
                        peer: listed_by[0].to_string(),
                        model: model.to_string(),
                    },
                ));
            }
        }
        routes.extend(bare_routes);
        Peers { peers, routes }
    }
}

/// The fully qualified name of a peer model. Peer and model names may both contain `/`, so an
/// FQN is only ever compared whole, never split.
pub fn fqn(peer: &str, model: &str) -> String {
    format!("{peer}/{model}")
}

/// Reads and checks the `peers` section against the local models and aliases.
pub(crate) fn build(
    top: &Fields<'_>,
    models: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    reporter: &mut Reporter<'_>,
) -> Result<Peers, ConfigError> {
    let Some(section) = top.mapping("peers", reporter, "a mapping of peer ids to peer settings")?
    else {
        return Ok(Peers::default());
    };
    let section_path = top.path("peers");
    let mut peers = BTreeMap::new();
    // FQN → (peer id, model index) of its first owner, to name both sides of a clash.
    let mut owners: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, value) in section {
        let id = key.as_str().unwrap_or_default().to_string();
        let path = section_path.key(&id);
        if id.trim().is_empty() {
            return Err(reporter.error(&path, "peer ids must not be empty"));
        }
        let Value::Mapping(mapping) = value else {
            return Err(reporter.error(
                &path,
                format!(
                    "expected a mapping with proxy and models, found {}",
                    describe(value)
                ),
            ));
        };
        let peer = build_peer(&id, mapping, &path, reporter)?;
        for (index, model) in peer.models.iter().enumerate() {
            let name = fqn(&id, model);
            let model_path = path.key("models").index(index);
            if models.contains_key(&name) {
                return Err(reporter.error(
                    &model_path,
                    format!(
                        "peer model name '{name}' (peers.{id}, model '{model}') conflicts with the local model id '{name}'"
                    ),
                ));
            }
            if let Some(local) = aliases.get(&name) {
                return Err(reporter.error(
                    &model_path,
                    format!(
                        "peer model name '{name}' (peers.{id}, model '{model}') conflicts with an alias of the local model '{local}'"
                    ),
                ));
            }
            if let Some((other, other_model)) = owners.get(&name) {
                return Err(reporter.error(
                    &model_path,
                    format!(
                        "peer model name '{name}' is ambiguous between peers.{other} model '{other_model}' and peers.{id} model '{model}'"
                    ),
                ));
            }
            owners.insert(name, (id.clone(), model.clone()));
        }
        peers.insert(id, peer);
    }
    Ok(Peers::new(peers))
}

/// Checks that no selector id or profile pin spells a peer model's FQN (built after the
/// peers, since selector targets and pins may name peer models).
pub(crate) fn check_reserved(
    top: &Fields<'_>,
    peers: &Peers,
    selectors: &BTreeMap<String, SelectorConfig>,
    profiles: &BTreeMap<String, ProfileConfig>,
    reporter: &mut Reporter<'_>,
) -> Result<(), ConfigError> {
    for peer in peers.peers.values() {
        for (index, model) in peer.models.iter().enumerate() {
            let name = fqn(&peer.id, model);
            let model_path = top.path("peers").key(&peer.id).key("models").index(index);
            let id = &peer.id;
            if selectors.contains_key(&name) {
                return Err(reporter.error(
                    &model_path,
                    format!(
                        "peer model name '{name}' (peers.{id}, model '{model}') conflicts with the selector id '{name}'"
                    ),
                ));
            }
            if let Some(profile) = profiles.values().find(|p| p.pins.contains_key(&name)) {
                return Err(reporter.error(
                    &model_path,
                    format!(
                        "peer model name '{name}' (peers.{id}, model '{model}') conflicts with the pin '{name}' of profile '{}'",
                        profile.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn build_peer(
    id: &str,
    mapping: &Mapping,
    path: &KeyPath,
    reporter: &mut Reporter<'_>,
) -> Result<PeerConfig, ConfigError> {
    schema::check_keys(mapping, path, PEER_KEYS, reporter);
    let fields = Fields::new(mapping, path);
    let proxy = match fields.optional_string("proxy", reporter)? {
        None => return Err(reporter.error(&path.key("proxy"), "proxy is required")),
        Some(proxy) => proxy,
    };
    let proxy = check_proxy_url(&proxy).map_err(|message| {
        reporter.error(&path.key("proxy"), format!("{message} (found '{proxy}')"))
    })?;
    let listed = fields.strings("models", reporter)?;
    if listed.is_empty() {
        return Err(reporter.error(
            &path.key("models"),
            "a peer needs a non-empty list of the models it serves",
        ));
    }
    let mut models: Vec<String> = Vec::with_capacity(listed.len());
    for (index, model) in listed.into_iter().enumerate() {
        if model.trim().is_empty() {
            return Err(reporter.error(
                &path.key("models").index(index),
                "model names must not be empty",
            ));
        }
        if !models.contains(&model) {
            models.push(model);
        }
    }
    let api_key = fields.optional_string("apiKey", reporter)?;
    if api_key
        .as_deref()
        .is_some_and(|key| key.contains(['\r', '\n']))
    {
        return Err(reporter.error(
            &path.key("apiKey"),
            "must not contain line breaks (it is sent as a header)",
        ));
    }
    let filters = build_filters(fields.get("filters"), &path.key("filters"), reporter)?;
    let timeouts = super::timeouts::build(&fields, reporter)?;
    let connect_timeout = timeouts.connect.unwrap_or(DEFAULT_PEER_CONNECT_TIMEOUT);
    let read_timeout = timeouts.response_header;
    Ok(PeerConfig {
        id: id.to_string(),
        proxy,
        models,
        api_key,
        filters,
        connect_timeout,
        read_timeout,
    })
}

/// A peer URL swapd can forward to: plain `http://host[:port][/path]`, trailing `/` removed.
fn check_proxy_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.starts_with("https://") {
        return Err(
            "https peers are not supported: swapd talks plain HTTP to peers on the LAN; \
             terminate TLS in front of the peer's clients instead"
                .to_string(),
        );
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must be an http:// URL".to_string());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
        return Err("must name a host, as in http://host:port".to_string());
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::parse(yaml, std::path::Path::new("config.yaml"), &|_| None)
            .map(|loaded| loaded.config)
    }

    const LOCAL: &str = "models:\n  local: {cmd: \"srv --port ${PORT}\", aliases: [nick]}\n";

    #[test]
    fn fqn_and_unique_bare_names_route_and_shared_bare_names_do_not() {
        let config = load(&format!(
            "{LOCAL}peers:\n  a: {{proxy: 'http://10.0.0.1:8080/', models: [x, shared, x]}}\n  b: {{proxy: http://10.0.0.2, models: [shared, y]}}\n"
        ))
        .expect("valid");
        let peers = &config.peers;
        let route = |name: &str| {
            peers
                .resolve(name)
                .map(|(p, m)| (p.id.clone(), m.to_string()))
        };
        assert_eq!(route("a/x"), Some(("a".into(), "x".into())));
        assert_eq!(route("x"), Some(("a".into(), "x".into())));
        assert_eq!(route("b/shared"), Some(("b".into(), "shared".into())));
        assert_eq!(route("shared"), None, "listed by two peers");
        assert_eq!(route("y"), Some(("b".into(), "y".into())));
        assert_eq!(route("a/y"), None);
        assert_eq!(peers.peers["a"].proxy, "http://10.0.0.1:8080");
        assert_eq!(
            peers.peers["a"].models,
            ["x", "shared"],
            "duplicates removed"
        );
        assert_eq!(peers.peers["a"].address(), "10.0.0.1:8080");
        assert_eq!(
            peers.peers["a"].connect_timeout,
            DEFAULT_PEER_CONNECT_TIMEOUT
        );
    }

    #[test]
    fn an_fqn_spelled_bare_name_is_the_fqn() {
        // Peer `a` lists `b/m` (FQN `a/b/m`), whose bare name spells peer b's FQN for `m`.
        let config = load(&format!(
            "{LOCAL}peers:\n  a: {{proxy: http://h1, models: [b/m]}}\n  b: {{proxy: http://h2, models: [m]}}\n"
        ))
        .expect("no two FQNs are equal");
        let route = |name: &str| {
            config
                .peers
                .resolve(name)
                .map(|(p, m)| (p.id.clone(), m.to_string()))
        };
        assert_eq!(route("b/m"), Some(("b".into(), "m".into())));
        assert_eq!(route("a/b/m"), Some(("a".into(), "b/m".into())));
        assert_eq!(route("m"), Some(("b".into(), "m".into())));
    }

    #[test]
    fn fqn_collisions_with_local_names_name_both() {
        let error = load(
            "models:\n  g/x: {cmd: \"srv --port ${PORT}\"}\npeers:\n  g: {proxy: http://h, models: [x]}\n",
        )
        .expect_err("collides with a model id");
        assert_eq!(error.key, "peers.g.models[0]");
        assert!(
            error.message.contains("local model id 'g/x'"),
            "{}",
            error.message
        );
        assert!(error.message.contains("peers.g"), "{}", error.message);
        assert!(error.line.is_some());

        let error = load(
            "models:\n  local: {cmd: \"srv --port ${PORT}\", aliases: [g/x]}\npeers:\n  g: {proxy: http://h, models: [x]}\n",
        )
        .expect_err("collides with an alias");
        assert!(
            error.message.contains("alias of the local model 'local'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn fqn_collisions_with_selectors_and_profile_pins_name_both() {
        let error = load(&format!(
            "{LOCAL}selectors:\n  g/x: {{strategy: pin, targets: [local]}}\npeers:\n  g: {{proxy: http://h, models: [x]}}\n"
        ))
        .expect_err("collides with a selector id");
        assert_eq!(error.key, "peers.g.models[0]");
        assert!(
            error.message.contains("selector id 'g/x'"),
            "{}",
            error.message
        );

        let error = load(&format!(
            "{LOCAL}profiles:\n  big:\n    pins: {{g/x: local}}\npeers:\n  g: {{proxy: http://h, models: [x]}}\n"
        ))
        .expect_err("collides with a profile pin");
        assert!(
            error.message.contains("pin 'g/x' of profile 'big'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn selector_targets_and_profile_pins_may_name_peer_models() {
        let config = load(&format!(
            "{LOCAL}selectors:\n  any: {{strategy: spillover, targets: [local, g/x]}}\nprofiles:\n  far:\n    pins: {{local: x}}\npeers:\n  g: {{proxy: http://h, models: [x]}}\n"
        ))
        .expect("peer models are valid targets");
        assert_eq!(config.selectors["any"].resolved, ["local", "g/x"]);
        assert_eq!(config.profiles["far"].pins["local"].as_deref(), Some("x"));
        let error = load(&format!(
            "{LOCAL}selectors:\n  any: {{strategy: pin, targets: [g/y]}}\npeers:\n  g: {{proxy: http://h, models: [x]}}\n"
        ))
        .expect_err("not a peer model");
        assert!(
            error.message.contains("unknown model 'g/y'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn peer_settings_are_checked() {
        for (peers, key, text) in [
            ("p: {models: [x]}", "peers.p.proxy", "proxy is required"),
            ("p: {proxy: http://h}", "peers.p.models", "non-empty list"),
            (
                "p: {proxy: http://h, models: []}",
                "peers.p.models",
                "non-empty list",
            ),
            (
                "p: {proxy: 'https://h', models: [x]}",
                "peers.p.proxy",
                "https peers",
            ),
            (
                "p: {proxy: 'ftp://h', models: [x]}",
                "peers.p.proxy",
                "http:// URL",
            ),
            (
                "p: {proxy: 'http://', models: [x]}",
                "peers.p.proxy",
                "name a host",
            ),
            (
                "p: {proxy: http://h, models: [x], timeouts: {connect: -1}}",
                "peers.p.timeouts.connect",
                "must be 0 or more seconds",
            ),
            ("p: [x]", "peers.p", "expected a mapping"),
        ] {
            let error = load(&format!("{LOCAL}peers:\n  {peers}\n")).expect_err(peers);
            assert_eq!(error.key, key, "{peers}");
            assert!(error.message.contains(text), "{peers}: {}", error.message);
        }
    }

    #[test]
    fn timeouts_api_key_and_filters_are_read() {
        let config = load(&format!(
            "{LOCAL}peers:\n  p:\n    proxy: http://h:1\n    models: [x]\n    apiKey: secret\n    timeouts: {{connect: 7, responseHeader: 9, idleConn: 90}}\n    filters:\n      stripParams: top_k\n      setParams: {{temperature: 0.5}}\n"
        ))
        .expect("valid");
        let peer = &config.peers.peers["p"];
        assert_eq!(peer.connect_timeout, Duration::from_secs(7));
        assert_eq!(peer.read_timeout, Some(Duration::from_secs(9)));
        assert_eq!(peer.api_key.as_deref(), Some("secret"));
        assert_eq!(peer.filters.strip_params, ["top_k"]);
        assert_eq!(peer.filters.set_params["temperature"], 0.5);
        // 0 means "not set", as in llama-swap; `keepalive` is llama-swap's spelling.
        let loaded = crate::config::parse(
            &format!("{LOCAL}peers:\n  p:\n    proxy: http://h:1\n    models: [x]\n    timeouts: {{connect: 0, responseHeader: 0, keepalive: 30}}\n"),
            std::path::Path::new("config.yaml"),
            &|_| None,
        )
        .expect("valid");
        let peer = &loaded.config.peers.peers["p"];
        assert_eq!(peer.connect_timeout, DEFAULT_PEER_CONNECT_TIMEOUT);
        assert_eq!(peer.read_timeout, None);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }
}
