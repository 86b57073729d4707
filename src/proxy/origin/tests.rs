//! Table tests for the keyless-swapd origin policy in `proxy::origin`: every `Host`, `Origin` and
//! fetch-metadata rule, the 403 texts and the exposure warnings.

use super::*;
use crate::config::HostPattern;

const ALLOW: Decision = Decision::Allow(Cors::Any);
const ECHO: Decision = Decision::Allow(Cors::Echo);
const HOST: Decision = Decision::Refuse(Refusal::Host);
const ORIGIN: Decision = Decision::Refuse(Refusal::Origin);
const FORM: Decision = Decision::Refuse(Refusal::FormPost);
const CROSS: Decision = Decision::Refuse(Refusal::CrossSite);

fn request<'a>(method: &'a str, path: &'a str) -> Facts<'a> {
    Facts {
        method,
        path,
        host: Some("127.0.0.1:8080"),
        ..Facts::default()
    }
}

fn access(origins: &[&str], hosts: &[&str]) -> Access {
    let origins: Vec<Option<OriginPattern>> = origins
        .iter()
        .map(|o| crate::config::access_parse_origin(o).expect("valid"))
        .collect();
    let hosts: Vec<Option<HostPattern>> = hosts
        .iter()
        .map(|h| crate::config::access_parse_host(h).expect("valid"))
        .collect();
    Access {
        origins: if origins.iter().any(Option::is_none) {
            OriginRule::Any
        } else {
            OriginRule::List(origins.into_iter().flatten().collect())
        },
        hosts: if hosts.iter().any(Option::is_none) {
            HostRule::Any
        } else {
            HostRule::List(hosts.into_iter().flatten().collect())
        },
    }
}

fn check(facts: Facts<'_>, access: &Access, keyed: bool) -> Decision {
    decide(
        &facts,
        &Policy {
            keyed,
            access,
            hostname: Some("workstation"),
        },
    )
}

#[test]
fn origins() {
    let none = access(&[], &[]);
    let listed = access(
        &[
            "https://app.example.com",
            "*.corp.example",
            "http://dev.example:3000",
        ],
        &[],
    );
    let star = access(&["*"], &[]);
    let extensions = access(&["chrome-extension://*", "vscode-webview://w1"], &[]);
    let post = |origin| Facts {
        origin: Some(origin),
        content_type: Some("application/json"),
        ..request("POST", "/api/models/unload")
    };
    let cases: &[(&str, &Access, Decision)] = &[
        ("http://localhost", &none, ECHO),
        ("http://localhost:5173", &none, ECHO),
        ("https://LOCALHOST:8443", &none, ECHO),
        ("http://127.0.0.1:3000", &none, ECHO),
        ("http://127.8.9.10", &none, ECHO),
        ("http://[::1]:3000", &none, ECHO),
        // swapd's own origin (the Host the request is addressed to).
        ("http://127.0.0.1:8080", &none, ECHO),
        ("https://evil.example", &none, ORIGIN),
        ("http://localhost.evil.example", &none, ORIGIN),
        ("null", &none, ORIGIN),
        ("file://", &none, ORIGIN),
        ("chrome-extension://abc", &none, ORIGIN),
        ("http://localhost:notaport", &none, ORIGIN),
        ("https://app.example.com", &listed, ECHO),
        ("https://app.example.com:443", &listed, ECHO),
        ("http://app.example.com", &listed, ORIGIN),
        ("https://app.example.com:8443", &listed, ORIGIN),
        ("https://a.corp.example:9999", &listed, ECHO),
        ("http://b.a.corp.example", &listed, ECHO),
        ("https://corp.example", &listed, ORIGIN),
        ("http://dev.example:3000", &listed, ECHO),
        ("http://dev.example:3001", &listed, ORIGIN),
        ("chrome-extension://abc", &listed, ORIGIN),
        ("chrome-extension://abc", &extensions, ECHO),
        ("CHROME-EXTENSION://xyz", &extensions, ECHO),
        ("moz-extension://abc", &extensions, ORIGIN),
        ("vscode-webview://w1", &extensions, ECHO),
        ("vscode-webview://w2", &extensions, ORIGIN),
        ("vscode-webview://w1:99", &extensions, ORIGIN),
        ("https://app.example.com", &extensions, ORIGIN),
        ("https://evil.example", &star, ECHO),
        ("null", &star, ECHO),
    ];
    for (origin, access, expected) in cases {
        assert_eq!(
            check(post(origin), access, false),
            *expected,
            "{origin} with {access:?}"
        );
    }
}

#[test]
fn own_origin_needs_an_allowed_host() {
    let own = |host, origin| Facts {
        host: Some(host),
        origin: Some(origin),
        ..request("POST", "/unload")
    };
    let none = access(&[], &[]);
    let proxied = access(&[], &["llm.example.com"]);
    let any_host = access(&[], &["*"]);
    let cases: &[(&str, &str, &Access, Decision)] = &[
        ("192.168.1.5:8080", "http://192.168.1.5:8080", &none, ECHO),
        ("192.168.1.5:8080", "http://192.168.1.5:8081", &none, ORIGIN),
        ("workstation:8080", "http://workstation:8080", &none, ECHO),
        ("Workstation:8080", "http://workstation:8080", &none, ECHO),
        ("swapd:8080", "http://swapd:8080", &none, ECHO),
        // Behind a reverse proxy that passes Host on, listed in allowedHosts.
        ("llm.example.com", "https://llm.example.com", &proxied, ECHO),
        (
            "llm.example.com:443",
            "https://llm.example.com",
            &proxied,
            ECHO,
        ),
        ("llm.example.com", "http://llm.example.com", &proxied, ECHO),
        (
            "llm.example.com",
            "https://other.example.com",
            &proxied,
            ORIGIN,
        ),
        // With the Host check off, a rebinding page must not count as swapd itself.
        (
            "evil.example:8080",
            "http://evil.example:8080",
            &any_host,
            ORIGIN,
        ),
        (
            "evil.example:8080",
            "http://localhost:3000",
            &any_host,
            ECHO,
        ),
    ];
    for (host, origin, access, expected) in cases {
        assert_eq!(
            check(own(host, origin), access, false),
            *expected,
            "Host {host}, Origin {origin}"
        );
    }
}

#[test]
fn hosts() {
    let none = access(&[], &[]);
    let listed = access(&[], &["llm.example.com", "*.lan.example"]);
    let star = access(&[], &["*"]);
    let cases: &[(Option<&str>, &Access, Decision)] = &[
        (None, &none, ALLOW),
        (Some(""), &none, ALLOW),
        (Some("127.0.0.1:8080"), &none, ALLOW),
        (Some("10.1.2.3"), &none, ALLOW),
        (Some("[::1]:8080"), &none, ALLOW),
        (Some("[fe80::1]"), &none, ALLOW),
        (Some("localhost:8080"), &none, ALLOW),
        (Some("LocalHost"), &none, ALLOW),
        (Some("app.localhost:8080"), &none, ALLOW),
        (Some("workstation:8080"), &none, ALLOW),
        (Some("workstation.local:8080"), &none, ALLOW),
        (Some("WorkStation.Local"), &none, ALLOW),
        (Some("nas.local:8080"), &none, HOST),
        (Some("workstation.evil.example"), &none, HOST),
        (Some("host.docker.internal:8080"), &none, ALLOW),
        (Some("swapd:8080"), &none, ALLOW),
        (Some("evil.example:8080"), &none, HOST),
        (Some("localhost.evil.example"), &none, HOST),
        (Some("127.0.0.1.nip.io:8080"), &none, HOST),
        (Some("[::1"), &none, HOST),
        (Some("llm.example.com"), &listed, ALLOW),
        (Some("LLM.Example.com:8080"), &listed, ALLOW),
        (Some("gpu.lan.example"), &listed, ALLOW),
        (Some("lan.example"), &listed, HOST),
        (Some("evil.example:8080"), &listed, HOST),
        (Some("evil.example:8080"), &star, ALLOW),
    ];
    for (host, access, expected) in cases {
        let facts = Facts {
            host: *host,
            ..request("GET", "/running")
        };
        assert_eq!(check(facts, access, false), *expected, "Host {host:?}");
    }
}

#[test]
fn health_is_always_open_but_not_its_preflight() {
    let none = access(&[], &[]);
    let evil = |method| Facts {
        host: Some("evil.example"),
        origin: Some("https://evil.example"),
        ..request(method, "/health")
    };
    assert_eq!(check(evil("GET"), &none, false), ALLOW);
    assert_eq!(check(evil("HEAD"), &none, false), ALLOW);
    assert_eq!(check(evil("OPTIONS"), &none, false), HOST);
}

#[test]
#[allow(clippy::type_complexity)] // The row type of a table.
fn requests_without_origin() {
    let none = access(&[], &[]);
    let star = access(&["*"], &[]);
    let listed = access(&["https://app.example.com"], &[]);
    let cases: &[(
        &str,
        &str,
        Option<&str>,
        Option<&str>,
        Option<&str>,
        &Access,
        Decision,
    )] = &[
        // curl, SDKs, servers.
        ("POST", "/api/models/unload", None, None, None, &none, ALLOW),
        ("GET", "/unload", None, None, None, &none, ALLOW),
        (
            "POST",
            "/v1/chat/completions",
            None,
            None,
            Some("application/x-www-form-urlencoded"),
            &none,
            ALLOW,
        ),
        // The user typed the address, or a same-origin page.
        ("GET", "/unload", Some("none"), None, None, &none, ALLOW),
        (
            "GET",
            "/unload",
            Some("same-origin"),
            None,
            None,
            &none,
            ALLOW,
        ),
        (
            "GET",
            "/unload",
            Some("same-site"),
            None,
            None,
            &none,
            ALLOW,
        ),
        // <img src="http://localhost:8080/unload"> on another site.
        (
            "GET",
            "/unload",
            Some("cross-site"),
            None,
            None,
            &none,
            CROSS,
        ),
        (
            "GET",
            "/upstream/a/",
            Some("cross-site"),
            None,
            None,
            &none,
            CROSS,
        ),
        (
            "GET",
            "/v1/audio/voices",
            Some("Cross-Site"),
            None,
            None,
            &none,
            CROSS,
        ),
        (
            "POST",
            "/api/config/reload",
            Some("cross-site"),
            None,
            None,
            &none,
            CROSS,
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some("cross-site"),
            None,
            Some("text/plain;charset=UTF-8"),
            &none,
            FORM,
        ),
        // A link to a page of swapd's from another site is harmless.
        ("GET", "/ui/", Some("cross-site"), None, None, &none, ALLOW),
        (
            "GET",
            "/running",
            Some("cross-site"),
            None,
            None,
            &none,
            ALLOW,
        ),
        // Without fetch metadata, the Referer tells.
        (
            "GET",
            "/unload",
            None,
            Some("https://evil.example/page?x"),
            None,
            &none,
            CROSS,
        ),
        (
            "POST",
            "/unload",
            None,
            Some("https://evil.example"),
            Some("multipart/form-data; boundary=x"),
            &none,
            FORM,
        ),
        (
            "GET",
            "/unload",
            None,
            Some("http://localhost:3000/dash"),
            None,
            &none,
            ALLOW,
        ),
        (
            "GET",
            "/unload",
            None,
            Some("http://127.0.0.1:8080/ui/"),
            None,
            &none,
            ALLOW,
        ),
        (
            "GET",
            "/running",
            None,
            Some("https://evil.example/"),
            None,
            &none,
            ALLOW,
        ),
        // A page listed in allowedOrigins, known by its Referer.
        (
            "GET",
            "/unload",
            Some("cross-site"),
            Some("https://app.example.com/x"),
            None,
            &listed,
            ALLOW,
        ),
        (
            "GET",
            "/unload",
            Some("cross-site"),
            Some("https://evil.example/x"),
            None,
            &listed,
            CROSS,
        ),
        // Fetch metadata outranks the Referer.
        (
            "GET",
            "/unload",
            Some("same-origin"),
            Some("https://evil.example/"),
            None,
            &none,
            ALLOW,
        ),
        // allowedOrigins "*" is llama-swap's behaviour.
        (
            "GET",
            "/unload",
            Some("cross-site"),
            None,
            None,
            &star,
            ALLOW,
        ),
    ];
    for (method, path, site, referer, content_type, access, expected) in cases {
        let facts = Facts {
            fetch_site: *site,
            referer: *referer,
            content_type: *content_type,
            ..request(method, path)
        };
        assert_eq!(
            check(facts, access, false),
            *expected,
            "{method} {path} site={site:?} referer={referer:?} type={content_type:?}"
        );
    }
}

#[test]
fn form_posts_from_foreign_origins() {
    let none = access(&[], &[]);
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=----x",
        "text/plain",
        "TEXT/PLAIN; charset=utf-8",
    ] {
        let facts = Facts {
            origin: Some("https://evil.example"),
            content_type: Some(content_type),
            ..request("POST", "/api/models/unload")
        };
        assert_eq!(check(facts, &none, false), FORM, "{content_type}");
        let local = Facts {
            origin: Some("http://localhost:3000"),
            ..facts
        };
        assert_eq!(
            check(local, &none, false),
            ECHO,
            "{content_type} from localhost"
        );
    }
}

#[test]
fn keys_turn_every_check_off() {
    let none = access(&[], &[]);
    let facts = Facts {
        host: Some("evil.example"),
        origin: Some("https://evil.example"),
        fetch_site: Some("cross-site"),
        content_type: Some("text/plain"),
        ..request("POST", "/api/models/unload")
    };
    assert_eq!(check(facts, &none, true), ALLOW);
    assert_eq!(check(facts, &none, false), HOST);
}

#[test]
fn messages_name_the_setting() {
    let facts = Facts {
        host: Some("evil.example:8080"),
        origin: Some("https://evil.example"),
        ..request("POST", "/unload")
    };
    let host = refusal_message(Refusal::Host, &facts);
    assert!(host.contains("'evil.example:8080'") && host.contains("swapd.allowedHosts"));
    for refusal in [Refusal::Origin, Refusal::FormPost, Refusal::CrossSite] {
        let message = refusal_message(refusal, &facts);
        assert!(message.contains("swapd.allowedOrigins"), "{message}");
        assert!(message.contains("apiKeys"), "{message}");
    }
}

#[test]
fn warnings() {
    let loopback: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let everywhere: SocketAddr = "0.0.0.0:8080".parse().expect("address");
    let mut config = Config::default();
    assert!(exposure_warnings(&config, loopback).is_empty());
    let exposed = exposure_warnings(&config, everywhere);
    assert_eq!(exposed.len(), 1);
    assert!(exposed[0].contains("0.0.0.0:8080") && exposed[0].contains("apiKeys"));
    config.access = access(&["*"], &["*"]);
    let open = exposure_warnings(&config, loopback);
    assert_eq!(open.len(), 2);
    assert!(open[0].contains("allowedOrigins"), "{open:?}");
    assert!(open[1].contains("allowedHosts"), "{open:?}");
    config.api_keys = vec!["k".to_string()];
    assert!(exposure_warnings(&config, everywhere).is_empty());
}

#[test]
fn referer_origins() {
    assert_eq!(
        referer_origin("https://a.example/x/y"),
        Some("https://a.example")
    );
    assert_eq!(referer_origin("http://a:1?q"), Some("http://a:1"));
    assert_eq!(referer_origin("http://a:1"), Some("http://a:1"));
    assert_eq!(referer_origin("garbage"), None);
}
