//! `swapd.allowedOrigins` and `swapd.allowedHosts`: who may use a swapd that has no `apiKeys`.
//!
//! This module owns the typed form of the two settings and their parsing (with errors that
//! name the offending entry); the decision that uses them on every request is the pure function
//! in `proxy::origin`. Patterns are lowercased here, once, so the request path compares bytes
//! case-insensitively without allocating.

/// The access settings of a keyless swapd (ignored when `apiKeys` is set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// Browser origins allowed besides the built-in ones (`allowedOrigins`).
    pub origins: OriginRule,
    /// `Host` names allowed besides the built-in ones (`allowedHosts`).
    pub hosts: HostRule,
}

/// `allowedOrigins`: extra patterns, or `"*"` (any origin, llama-swap's behaviour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    Any,
    List(Vec<OriginPattern>),
}

impl Default for OriginRule {
    fn default() -> OriginRule {
        OriginRule::List(Vec::new())
    }
}

/// `allowedHosts`: extra names, or `"*"` (the check is off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    Any,
    List(Vec<HostPattern>),
}

impl Default for HostRule {
    fn default() -> HostRule {
        HostRule::List(Vec::new())
    }
}

/// A host name, exact or `*.example.com` (any name ending in `.example.com`), lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `.example.com`.
    Suffix(String),
    /// `*` after a scheme in `allowedOrigins` (`chrome-extension://*`): any host.
    Any,
}

impl HostPattern {
    /// Whether `host` (any case, without a port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Suffix(suffix) => ends_with_ignore_case(host, suffix),
            HostPattern::Any => true,
        }
    }
}

/// Which ports an origin pattern accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// Any port (a pattern without a scheme, or an explicit `:*`).
    Any,
    /// Only the scheme's default port (an exact origin written without a port).
    Default,
    Exact(u16),
}

/// One `allowedOrigins` entry: `[scheme://]host[:port]`, where host may be `*.example.com`
/// (or `*` after a scheme, for `chrome-extension://*`). Without a scheme it matches http and
/// https on any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// Lowercase scheme (`https`, `chrome-extension`, ...); `None` matches http and https.
    pub scheme: Option<String>,
    pub host: HostPattern,
    pub port: PortPattern,
}

/// Whether `text` ends with `suffix` (ASCII case-insensitive) and has something before it.
pub fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() > suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Parses one `allowedHosts` entry (`Ok(None)` is `"*"`).
pub(crate) fn parse_host(entry: &str) -> Result<Option<HostPattern>, String> {
    let entry = entry.trim().to_ascii_lowercase();
    if entry == "*" {
        return Ok(None);
    }
    if entry.contains("://") {
        return Err(format!(
            "'{entry}' is an origin; allowedHosts takes host names such as 'llm.example.com' \
             (origins go in allowedOrigins)"
        ));
    }
    if !entry.starts_with('[') && entry.contains(':') {
        return Err(format!(
            "'{entry}' has a port; allowedHosts takes host names without a port (any port matches)"
        ));
    }
    parse_host_name(&entry).map(Some)
}

/// Parses one `allowedOrigins` entry (`Ok(None)` is `"*"`).
pub(crate) fn parse_origin(entry: &str) -> Result<Option<OriginPattern>, String> {
    let entry = entry.trim().to_ascii_lowercase();
    if entry == "*" {
        return Ok(None);
    }
    let (scheme, rest) = match entry.split_once("://") {
        Some((scheme, rest)) => {
            let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            if !valid {
                return Err(format!("'{entry}' has an invalid scheme '{scheme}'"));
            }
            (Some(scheme.to_string()), rest)
        }
        None => (None, entry.as_str()),
    };
    // Browsers send origins without a path; a pasted URL's trailing slash is harmless.
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!(
            "'{entry}' has a path; an origin is scheme://host[:port] only"
        ));
    }
    let (host, port) = split_authority(authority);
    let port = match port {
        None if scheme.is_some() => PortPattern::Default,
        None => PortPattern::Any,
        Some("*") => PortPattern::Any,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) => PortPattern::Exact(port),
            Err(_) => return Err(format!("'{entry}' has an invalid port '{digits}'")),
        },
    };
    let host = if host == "*" && scheme.is_some() {
        HostPattern::Any
    } else {
        parse_host_name(host)?
    };
    Ok(Some(OriginPattern { scheme, host, port }))
}

fn parse_host_name(host: &str) -> Result<HostPattern, String> {
    if host.is_empty() {
        return Err("an empty host name".to_string());
    }
    if host
        .bytes()
        .any(|byte| byte.is_ascii_whitespace() || matches!(byte, b'/' | b'@' | b'?' | b'#'))
    {
        return Err(format!("'{host}' is not a host name"));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(format!(
                "'{host}': a wildcard is written '*.example.com' (a leading '*.' only)"
            ));
        }
        return Ok(HostPattern::Suffix(format!(".{suffix}")));
    }
    if host.contains('*') {
        return Err(format!(
            "'{host}': a wildcard is written '*.example.com' (a leading '*.' only), or '*' alone"
        ));
    }
    Ok(HostPattern::Exact(host.to_string()))
}

/// Splits `host[:port]` or `[v6]:port`; the brackets of an IPv6 literal stay on the host.
pub fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(host: &str) -> HostPattern {
        HostPattern::Exact(host.to_string())
    }

    #[test]
    fn origin_entries_parse() {
        let cases: &[(&str, Option<OriginPattern>)] = &[
            ("*", None),
            (
                "https://App.Example.com",
                Some(OriginPattern {
                    scheme: Some("https".to_string()),
                    host: exact("app.example.com"),
                    port: PortPattern::Default,
                }),
            ),
            (
                "http://app.example.com:3000/",
                Some(OriginPattern {
                    scheme: Some("http".to_string()),
                    host: exact("app.example.com"),
                    port: PortPattern::Exact(3000),
                }),
            ),
            (
                "*.example.com",
                Some(OriginPattern {
                    scheme: None,
                    host: HostPattern::Suffix(".example.com".to_string()),
                    port: PortPattern::Any,
                }),
            ),
            (
                "https://*.example.com:*",
                Some(OriginPattern {
                    scheme: Some("https".to_string()),
                    host: HostPattern::Suffix(".example.com".to_string()),
                    port: PortPattern::Any,
                }),
            ),
            (
                "chrome-extension://*",
                Some(OriginPattern {
                    scheme: Some("chrome-extension".to_string()),
                    host: HostPattern::Any,
                    port: PortPattern::Default,
                }),
            ),
            (
                "vscode-webview://abc123",
                Some(OriginPattern {
                    scheme: Some("vscode-webview".to_string()),
                    host: exact("abc123"),
                    port: PortPattern::Default,
                }),
            ),
            (
                "http://[::1]:9000",
                Some(OriginPattern {
                    scheme: Some("http".to_string()),
                    host: exact("[::1]"),
                    port: PortPattern::Exact(9000),
                }),
            ),
        ];
        for (entry, expected) in cases {
            assert_eq!(&parse_origin(entry).expect(entry), expected, "{entry}");
        }
    }

    #[test]
    fn bad_origin_entries_are_errors() {
        for (entry, needle) in [
            ("1tp://x.example", "scheme"),
            ("https://x.example/app", "path"),
            ("https://x.example:99999", "port"),
            ("https://", "empty"),
            ("https://a.*.example", "wildcard"),
            ("*.", "wildcard"),
            ("https://user@x.example", "not a host name"),
        ] {
            let error = parse_origin(entry).expect_err(entry);
            assert!(error.contains(needle), "{entry}: {error}");
        }
    }

    #[test]
    fn host_entries_parse() {
        assert_eq!(parse_host("*"), Ok(None));
        assert_eq!(
            parse_host("LLM.example.com"),
            Ok(Some(exact("llm.example.com")))
        );
        assert_eq!(
            parse_host("*.lan"),
            Ok(Some(HostPattern::Suffix(".lan".to_string())))
        );
        assert!(parse_host("llm.example.com:8080")
            .expect_err("port")
            .contains("without a port"));
        assert!(parse_host("https://llm.example.com")
            .expect_err("origin")
            .contains("allowedOrigins"));
        assert!(parse_host("").is_err());
    }

    #[test]
    fn host_patterns_match_case_insensitively() {
        let suffix = HostPattern::Suffix(".example.com".to_string());
        assert!(suffix.matches("a.example.com"));
        assert!(suffix.matches("A.B.EXAMPLE.COM"));
        assert!(
            !suffix.matches("example.com"),
            "the bare domain is not a subdomain"
        );
        assert!(!suffix.matches("badexample.com"));
        assert!(exact("llm.example.com").matches("LLM.Example.Com"));
        assert!(!exact("llm.example.com").matches("llm.example.com.evil"));
    }

    fn load(text: &str) -> Result<crate::config::Config, String> {
        crate::config::parse(text, std::path::Path::new("config.yaml"), &|_| None)
            .map(|loaded| loaded.config)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn the_loader_builds_the_rules() {
        let config = load("models: {}\n").expect("loads");
        assert_eq!(config.access, Access::default());
        let config = load(
            "swapd:\n  allowedOrigins: [\"https://a.example\", \"*\"]\n  allowedHosts: [b.example]\n",
        )
        .expect("loads");
        assert_eq!(config.access.origins, OriginRule::Any, "'*' anywhere wins");
        assert_eq!(
            config.access.hosts,
            HostRule::List(vec![exact("b.example")])
        );
    }

    #[test]
    fn loader_errors_name_line_and_key() {
        let error = load("swapd:\n  allowedHosts:\n    - ok.example\n    - bad.example:8080\n")
            .expect_err("a port");
        assert!(
            error.starts_with("config.yaml:4:") && error.contains("swapd.allowedHosts[1]"),
            "{error}"
        );
        let error = load("swapd:\n  allowedOrigins: https://a.example\n").expect_err("not a list");
        assert!(
            error.contains("config.yaml:2:") && error.contains("swapd.allowedOrigins"),
            "{error}"
        );
    }

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("a.b:80"), ("a.b", Some("80")));
        assert_eq!(split_authority("a.b"), ("a.b", None));
        assert_eq!(split_authority("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_authority("[::1]"), ("[::1]", None));
    }
}
