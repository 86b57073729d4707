//! Whether a browser-borne request may use a swapd that has no `apiKeys`: the decision as a pure
//! function of the request's headers and the config, table-tested in `origin/tests.rs`.
//!
//! Without keys, anything that can reach the port can drive swapd; on a desktop that includes
//! every web page the browser opens (loopback is reachable from the browser). Three rules close
//! that while leaving curl, SDKs and servers (which send no `Origin`) untouched:
//!
//! - **Host** (DNS rebinding): a page on `evil.example` whose name is re-pointed to 127.0.0.1
//!   is same-origin with swapd as far as the browser knows, but its requests still carry
//!   `Host: evil.example`. The `Host` must be an IP literal, `localhost` or `*.localhost`, the
//!   machine's name (or `name.local`), a single-label name (`swapd`, as Docker networks name
//!   containers), a `*.internal` name (`host.docker.internal`), or in `allowedHosts`. None of
//!   these can be made to resolve to a page an attacker serves from the public internet (an
//!   attacker on the local network can answer single-label lookups, but can also reach a
//!   swapd that listens beyond loopback directly).
//! - **Origin**: a request with an `Origin` is served only from localhost pages, swapd's own
//!   origin (so a UI served by swapd works, also behind a reverse proxy that keeps `Host`), and
//!   `allowedOrigins`. Refusing before the handler also stops form posts, which browsers send
//!   cross-origin without a preflight.
//! - **No `Origin`**: browsers leave it off simple GETs (`<img src=…/unload>`). When fetch
//!   metadata (`Sec-Fetch-Site: cross-site`) or, lacking that, the `Referer` shows that a
//!   foreign page sent the request, routes with side effects and non-GET methods are refused.
//!
//! With `apiKeys` set nothing here applies: the key protects, and CORS stays llama-swap's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{
    ends_with_ignore_case, split_authority, Access, Config, HostRule, OriginPattern, OriginRule,
    PortPattern,
};

/// What the decision looks at, borrowed from the request (nothing is allocated).
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    pub origin: Option<&'a str>,
    pub host: Option<&'a str>,
    /// `Sec-Fetch-Site`, which browsers set and pages cannot.
    pub fetch_site: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

/// The config side of the decision.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `apiKeys` is set: every check is off.
    pub keyed: bool,
    pub access: &'a Access,
    /// This machine's host name, read once at startup.
    pub hostname: Option<&'a str>,
}

impl<'a> Policy<'a> {
    pub fn new(config: &'a Config, hostname: Option<&'a str>) -> Policy<'a> {
        Policy {
            keyed: !config.api_keys.is_empty(),
            access: &config.access,
            hostname,
        }
    }
}

/// What a CORS preflight answers in `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cors {
    /// `*`: llama-swap's answer, kept for keyed daemons and requests without `Origin`.
    Any,
    /// The request's own `Origin` (with `Vary: Origin`): an allowed page of a keyless daemon.
    Echo,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` is not a name this machine answers to (DNS rebinding).
    Host,
    /// The `Origin` is not allowed.
    Origin,
    /// A form post (no preflight) from an origin that is not allowed.
    FormPost,
    /// No `Origin`, but fetch metadata or the `Referer` shows a foreign page sent it.
    CrossSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(Cors),
    Refuse(Refusal),
}

/// The decision for one request.
pub fn decide(facts: &Facts<'_>, policy: &Policy<'_>) -> Decision {
    if policy.keyed {
        return Decision::Allow(Cors::Any);
    }
    if facts.path == "/health" && facts.method != "OPTIONS" {
        return Decision::Allow(Cors::Any);
    }
    if let Some(host) = facts.host.filter(|host| !host.is_empty()) {
        if !host_allowed(split_authority(host).0, policy, true) {
            return Decision::Refuse(Refusal::Host);
        }
    }
    if let Some(origin) = facts.origin {
        return if origin_allowed(origin, facts.host, policy) {
            Decision::Allow(Cors::Echo)
        } else if is_form(facts.content_type) {
            Decision::Refuse(Refusal::FormPost)
        } else {
            Decision::Refuse(Refusal::Origin)
        };
    }
    if policy.access.origins == OriginRule::Any || !sent_by_foreign_page(facts, policy) {
        return Decision::Allow(Cors::Any);
    }
    let harmless = matches!(facts.method, "GET" | "HEAD" | "OPTIONS")
        && !has_side_effects(facts.method, facts.path);
    if harmless {
        // A link to swapd from another site, say; the page cannot read the answer.
        Decision::Allow(Cors::Any)
    } else if is_form(facts.content_type) {
        Decision::Refuse(Refusal::FormPost)
    } else {
        Decision::Refuse(Refusal::CrossSite)
    }
}

/// The text of a 403 for `refusal`: what was refused and which setting opens it.
pub fn refusal_message(refusal: Refusal, facts: &Facts<'_>) -> String {
    const KEYLESS: &str = "this swapd has no apiKeys, so it serves web pages only from localhost \
                           and its own address";
    match refusal {
        Refusal::Host => format!(
            "host '{}' is not allowed: {KEYLESS}, and answers only requests addressed to \
             localhost, an IP address or this machine's name (DNS rebinding protection); add the \
             name to swapd.allowedHosts in the config, or set apiKeys",
            facts.host.unwrap_or_default()
        ),
        Refusal::Origin => format!(
            "origin '{}' is not allowed: {KEYLESS}; add the origin to swapd.allowedOrigins in \
             the config, or set apiKeys",
            facts.origin.unwrap_or_default()
        ),
        Refusal::FormPost => format!(
            "a form post from '{}' is refused (cross-site request forgery protection): \
             {KEYLESS}; add the origin to swapd.allowedOrigins in the config, or set apiKeys",
            facts.origin.or(facts.referer).unwrap_or("another site")
        ),
        Refusal::CrossSite => format!(
            "a request from another site ('{}') cannot use {} {}: {KEYLESS}; add the page's \
             origin to swapd.allowedOrigins in the config, or set apiKeys",
            facts.referer.unwrap_or("unknown page"),
            facts.method,
            facts.path
        ),
    }
}

/// The `code` of the 403's error envelope.
pub fn refusal_code(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Host => "host_not_allowed",
        Refusal::Origin | Refusal::FormPost | Refusal::CrossSite => "origin_not_allowed",
    }
}

/// Warnings to log at startup (and after a reload that changed them): a keyless swapd reachable
/// from other machines, and settings that switch a protection off.
pub fn exposure_warnings(config: &Config, listen: SocketAddr) -> Vec<String> {
    let mut warnings = Vec::new();
    if !config.api_keys.is_empty() {
        return warnings;
    }
    if !listen.ip().is_loopback() {
        warnings.push(format!(
            "listening on {listen}, which other machines can reach, without apiKeys: anyone on \
             the network can run and unload models, reload the config and read the logs; set \
             apiKeys in the config (or listen on 127.0.0.1)"
        ));
    }
    if config.access.origins == OriginRule::Any {
        warnings.push(
            "swapd.allowedOrigins is \"*\" and there are no apiKeys: any web page the browser \
             opens can run and unload models, reload the config and read the logs \
             (llama-swap's behaviour); list the origins you use, or set apiKeys"
                .to_string(),
        );
    }
    if config.access.hosts == HostRule::Any {
        warnings.push(
            "swapd.allowedHosts is \"*\" and there are no apiKeys: pages can reach this swapd \
             through DNS rebinding; list the host names you use, or set apiKeys"
                .to_string(),
        );
    }
    warnings
}

/// This machine's host name, lowercase (read once at startup).
pub fn machine_hostname() -> Option<String> {
    let mut buffer = [0u8; 256];
    let (pointer, length) = (buffer.as_mut_ptr().cast::<libc::c_char>(), buffer.len());
    // SAFETY: gethostname writes at most `length` bytes into `buffer`, which we own and which
    // outlives the call.
    let result = unsafe { libc::gethostname(pointer, length) };
    if result != 0 {
        return None;
    }
    let end = buffer.iter().position(|&byte| byte == 0)?;
    let name = std::str::from_utf8(&buffer[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// Routes that change something even when asked with GET: unloading, and anything that
/// loads a model (model routes, `/upstream/…`).
fn has_side_effects(method: &str, path: &str) -> bool {
    path == "/unload"
        || path.starts_with("/upstream/")
        || super::extract::route(method, path).is_some()
}

/// Content types a page can post cross-origin without a preflight.
fn is_form(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
    ]
    .iter()
    .any(|form| essence.eq_ignore_ascii_case(form))
}

/// Whether a request without `Origin` was sent by a page of a foreign site.
fn sent_by_foreign_page(facts: &Facts<'_>, policy: &Policy<'_>) -> bool {
    let referer_allowed = || {
        facts
            .referer
            .and_then(referer_origin)
            .map(|origin| origin_allowed(origin, facts.host, policy))
    };
    match facts.fetch_site {
        // The browser says; `same-site` pages (other ports of the same host) are local ones,
        // and a cross-site page may still be one listed in allowedOrigins.
        Some(site) => site.eq_ignore_ascii_case("cross-site") && referer_allowed() != Some(true),
        None => referer_allowed() == Some(false),
    }
}

/// `scheme://authority` of a Referer URL.
fn referer_origin(referer: &str) -> Option<&str> {
    let scheme_end = referer.find("://")? + 3;
    let end = referer[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(referer.len(), |offset| scheme_end + offset);
    Some(&referer[..end])
}

/// Whether `host` (without port) is one this machine answers to. `wildcard` says whether
/// `allowedHosts: "*"` counts: it does for the Host check, not for recognising swapd's own
/// origin (or a rebinding page would pass as swapd itself).
fn host_allowed(host: &str, policy: &Policy<'_>, wildcard: bool) -> bool {
    if is_ip_literal(host)
        || host.eq_ignore_ascii_case("localhost")
        || ends_with_ignore_case(host, ".localhost")
        || ends_with_ignore_case(host, ".internal")
        || is_single_label(host)
        || policy
            .hostname
            .is_some_and(|name| is_machine_name(host, name))
    {
        return true;
    }
    match &policy.access.hosts {
        HostRule::Any => wildcard,
        HostRule::List(patterns) => patterns.iter().any(|pattern| pattern.matches(host)),
    }
}

/// The machine's name, or its mDNS name (`name.local`). Other `.local` names are not trusted:
/// anyone on the local network can announce them.
fn is_machine_name(host: &str, name: &str) -> bool {
    if host.eq_ignore_ascii_case(name) {
        return true;
    }
    ends_with_ignore_case(host, ".local")
        && host[..host.len() - ".local".len()].eq_ignore_ascii_case(name)
}

/// A name without dots (`swapd`, as Docker's networks name containers): the public DNS has
/// no such names an attacker could point at a page.
fn is_single_label(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn is_ip_literal(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    host.parse::<Ipv4Addr>().is_ok()
}

/// Whether a browser page at `origin` may use swapd.
fn origin_allowed(origin: &str, host_header: Option<&str>, policy: &Policy<'_>) -> bool {
    if policy.access.origins == OriginRule::Any {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `null` (sandboxed frames, file: pages) and anything malformed.
        return false;
    };
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let (host, port) = split_authority(authority);
    let Some(port) = effective_port(scheme, port) else {
        return false;
    };
    if web {
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return true;
        }
        // swapd's own origin: the page was served from the address this request is sent to.
        if let Some(host_header) = host_header {
            let (own_host, own_port) = split_authority(host_header);
            if own_host.eq_ignore_ascii_case(host)
                && effective_port(scheme, own_port) == Some(port)
                && host_allowed(own_host, policy, false)
            {
                return true;
            }
        }
    }
    match &policy.access.origins {
        OriginRule::Any => true,
        OriginRule::List(patterns) => patterns
            .iter()
            .any(|pattern| pattern_matches(pattern, scheme, web, host, port)),
    }
}

/// The port an origin's authority names, or its scheme's default (0 for schemes without one,
/// such as `chrome-extension`).
fn effective_port(scheme: &str, port: Option<&str>) -> Option<u16> {
    match port {
        None | Some("") if scheme.eq_ignore_ascii_case("https") => Some(443),
        None | Some("") if scheme.eq_ignore_ascii_case("http") => Some(80),
        None | Some("") => Some(0),
        Some(digits) => digits.parse().ok(),
    }
}

fn pattern_matches(
    pattern: &OriginPattern,
    scheme: &str,
    web: bool,
    host: &str,
    port: u16,
) -> bool {
    let scheme_matches = match &pattern.scheme {
        Some(wanted) => scheme.eq_ignore_ascii_case(wanted),
        None => web,
    };
    if !scheme_matches || !pattern.host.matches(host) {
        return false;
    }
    match pattern.port {
        PortPattern::Any => true,
        PortPattern::Default => effective_port(scheme, None) == Some(port),
        PortPattern::Exact(wanted) => wanted == port,
    }
}

#[cfg(test)]
mod tests;
