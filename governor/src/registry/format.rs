//! Parsing of service-registry values: which addresses an instance's value
//! names, and which service and instance a key belongs to.
//!
//! Pure functions only; the registry client decides what to do with them.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

/// How a registry writes its instances' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSON with an `endpoints` list of URLs, kratos-style:
    /// `{"id":"1","name":"helloworld","version":"v1","metadata":{},"endpoints":["http://127.0.0.1:8000","grpc://[::1]:9000?isSecure=false"]}`
    Kratos,
    /// The value is `host:port` (go-zero style), surrounding whitespace ignored.
    HostPort,
    /// etcd's naming JSON: `{"Op":0,"Addr":"127.0.0.1:8080","Metadata":null}`.
    /// `Addr` is required and other fields are ignored, except that `"Op":1`
    /// (delete, in old etcd naming updates) is [`ValueError::Deleted`].
    Naming,
}

impl Format {
    /// The name used in configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Kratos => "kratos",
            Format::HostPort => "host_port",
            Format::Naming => "naming",
        }
    }
}

/// Why a value cannot be used. Shown in logs; `kind()` is a short stable label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("value is not UTF-8")]
    NotUtf8,
    /// Invalid JSON or the wrong shape, with `serde_json`'s message.
    #[error("invalid JSON value: {0}")]
    Json(String),
    /// Kratos: `endpoints` is missing, null or empty.
    #[error("no endpoints in value")]
    NoEndpoints,
    /// The address names no port; the default port of a URL's scheme is not
    /// guessed.
    #[error("no port in address {0:?}")]
    MissingPort(String),
    /// The port is not a number in 1..=65535.
    #[error("bad port in address {0:?}")]
    BadPort(String),
    /// Empty host, unclosed `[`, characters a hostname cannot have, etc.
    #[error("bad address {0:?}")]
    BadAddress(String),
    /// A naming value with `"Op":1`: the instance was deleted.
    #[error("value is a delete update (Op 1)")]
    Deleted,
}

impl ValueError {
    /// A short stable label, for metrics and structured logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ValueError::NotUtf8 => "not_utf8",
            ValueError::Json(_) => "json",
            ValueError::NoEndpoints => "no_endpoints",
            ValueError::MissingPort(_) => "missing_port",
            ValueError::BadPort(_) => "bad_port",
            ValueError::BadAddress(_) => "bad_address",
            ValueError::Deleted => "deleted",
        }
    }
}

/// One address of an instance. Hostnames are kept (they are valid), but only
/// IP literals can be matched to this node's sockets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    Ip(SocketAddr),
    Host(String, u16),
}

/// The addresses a value names, in the value's order, duplicates removed.
/// Err when the value cannot be used; an Ok list is never empty.
///
/// One bad address makes the whole value unusable: an instance is only
/// matched when every address it advertises is understood.
///
/// # Errors
///
/// The [`ValueError`] of the first problem found.
pub fn addresses(format: Format, value: &[u8]) -> Result<Vec<Address>, ValueError> {
    let text = std::str::from_utf8(value).map_err(|_| ValueError::NotUtf8)?;
    match format {
        Format::HostPort => Ok(vec![address(text.trim(), text.trim())?]),
        Format::Naming => naming(text),
        Format::Kratos => kratos(text),
    }
}

/// Splits an instance key under a registry prefix into (service, instance
/// id): the service is the first path segment after the prefix, the id is
/// the rest (may contain '/'). The prefix may or may not end in '/'; an empty
/// prefix takes every key, with or without a leading '/' (go-zero's default
/// keys have none). None when the key is not under the prefix or the service
/// or the id is empty.
#[must_use]
pub fn service_and_id<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str)> {
    let rest = if prefix.is_empty() {
        key.strip_prefix('/').unwrap_or(key)
    } else {
        key.strip_prefix(prefix.trim_end_matches('/'))?.strip_prefix('/')?
    };
    let (service, id) = rest.split_once('/')?;
    (!service.is_empty() && !id.is_empty()).then_some((service, id))
}

fn json_error(e: &serde_json::Error) -> ValueError {
    ValueError::Json(e.to_string())
}

/// A JSON object as `T`. Going through a map first rejects arrays, which
/// serde would otherwise take as a struct's fields in order.
fn json_object<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ValueError> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| json_error(&e))
}

#[derive(serde::Deserialize)]
struct KratosValue {
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

fn kratos(text: &str) -> Result<Vec<Address>, ValueError> {
    let value: KratosValue = json_object(text)?;
    let endpoints = value.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(ValueError::NoEndpoints);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for endpoint in &endpoints {
        let a = url_address(endpoint.trim())?;
        if seen.insert(a.clone()) {
            out.push(a);
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct NamingValue {
    // Any JSON value: only the number 1 matters, the rest is ignored.
    #[serde(rename = "Op", default)]
    op: Option<serde_json::Value>,
    #[serde(rename = "Addr", default)]
    addr: Option<String>,
}

fn naming(text: &str) -> Result<Vec<Address>, ValueError> {
    let value: NamingValue = json_object(text)?;
    // A delete update may carry no usable address: say it is a delete first.
    if value.op.as_ref().and_then(serde_json::Value::as_u64) == Some(1) {
        return Err(ValueError::Deleted);
    }
    let addr = value.addr.ok_or_else(|| json_error(&serde::de::Error::missing_field("Addr")))?;
    Ok(vec![address(addr.trim(), addr.trim())?])
}

/// `scheme://[userinfo@]host:port[/path][?query][#frag]`. Text without
/// `://` is taken as the authority part alone.
fn url_address(url: &str) -> Result<Address, ValueError> {
    let bad = || ValueError::BadAddress(url.to_owned());
    let after_scheme = match url.split_once("://") {
        Some((scheme, rest)) => {
            let mut chars = scheme.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return Err(bad());
            }
            rest
        }
        None => url,
    };
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    address(host_port, url)
}

/// `host:port` or `[v6]:port`; errors name `shown` (the whole URL for
/// Kratos, so that logs show what the registry holds).
fn address(text: &str, shown: &str) -> Result<Address, ValueError> {
    let missing_port = || ValueError::MissingPort(shown.to_owned());
    let bad_port = || ValueError::BadPort(shown.to_owned());
    let bad_address = || ValueError::BadAddress(shown.to_owned());

    // Covers IPv4, bracketed IPv6 and IPv6 scope ids (`[fe80::1%2]:80`).
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return if addr.port() == 0 { Err(bad_port()) } else { Ok(Address::Ip(addr)) };
    }

    if let Some(bracketed) = text.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or_else(bad_address)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| bad_address())?;
        let port = match after {
            "" => return Err(missing_port()),
            _ => after.strip_prefix(':').ok_or_else(bad_address)?,
        };
        return Ok(Address::Ip(SocketAddr::V6(SocketAddrV6::new(ip, parse_port(port, shown)?, 0, 0))));
    }

    let Some((host, port)) = text.rsplit_once(':') else {
        check_hostname(text, shown)?;
        return Err(missing_port());
    };
    if host.contains(':') {
        // `::1`, `fe80::1:80`: without brackets there is no way to tell the port.
        return Err(if text.parse::<Ipv6Addr>().is_ok() { missing_port() } else { bad_address() });
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Address::Ip(SocketAddr::V4(SocketAddrV4::new(ip, parse_port(port, shown)?))));
    }
    check_hostname(host, shown)?;
    Ok(Address::Host(host.to_owned(), parse_port(port, shown)?))
}

/// Letters, digits, '-', '.', '_'; not empty.
fn check_hostname(host: &str, shown: &str) -> Result<(), ValueError> {
    let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid { Ok(()) } else { Err(ValueError::BadAddress(shown.to_owned())) }
}

/// Decimal digits only (no sign), 1..=65535; empty is a missing port.
fn parse_port(port: &str, shown: &str) -> Result<u16, ValueError> {
    if port.is_empty() {
        return Err(ValueError::MissingPort(shown.to_owned()));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(ValueError::BadPort(shown.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> Address {
        Address::Ip(s.parse().unwrap())
    }

    fn host(h: &str, port: u16) -> Address {
        Address::Host(h.to_owned(), port)
    }

    fn kind(format: Format, value: &str) -> &'static str {
        addresses(format, value.as_bytes()).unwrap_err().kind()
    }

    #[test]
    fn format_names_match_serde() {
        for f in [Format::Kratos, Format::HostPort, Format::Naming] {
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{}\"", f.as_str()));
            assert_eq!(serde_json::from_str::<Format>(&format!("\"{}\"", f.as_str())).unwrap(), f);
        }
    }

    #[test]
    fn host_port_values() {
        let a = |v: &str| addresses(Format::HostPort, v.as_bytes());
        assert_eq!(a("127.0.0.1:8080"), Ok(vec![ip("127.0.0.1:8080")]));
        assert_eq!(a(" \t10.0.0.1:80\n"), Ok(vec![ip("10.0.0.1:80")]));
        assert_eq!(a("[::1]:9000"), Ok(vec![ip("[::1]:9000")]));
        assert_eq!(a("[fe80::1%2]:80"), Ok(vec![ip("[fe80::1%2]:80")]));
        // IPv4-mapped IPv6 stays IPv6.
        let mapped = a("[::ffff:10.0.0.1]:80").unwrap();
        assert!(matches!(mapped[..], [Address::Ip(SocketAddr::V6(_))]));
        assert_eq!(a("user-svc.default_ns.local:8080"), Ok(vec![host("user-svc.default_ns.local", 8080)]));
        assert_eq!(a("localhost:080"), Ok(vec![host("localhost", 80)]));
    }

    #[test]
    fn host_port_errors() {
        let cases = [
            ("", "bad_address"),
            ("   ", "bad_address"),
            (":80", "bad_address"),
            ("bad host:80", "bad_address"),
            ("bad/host:80", "bad_address"),
            ("[::1:80", "bad_address"),
            ("[::1]x80", "bad_address"),
            ("[1.2.3.4]:80", "bad_address"),
            ("[example.com]:80", "bad_address"),
            ("a:b:c", "bad_address"),
            ("localhost", "missing_port"),
            ("127.0.0.1", "missing_port"),
            ("localhost:", "missing_port"),
            ("::1", "missing_port"),
            ("fe80::1:8080", "missing_port"),
            ("[::1]", "missing_port"),
            ("[::1]:", "missing_port"),
            ("127.0.0.1:0", "bad_port"),
            ("[::1]:0", "bad_port"),
            ("[fe80::1%2]:0", "bad_port"),
            ("localhost:65536", "bad_port"),
            ("localhost:+80", "bad_port"),
            ("localhost:http", "bad_port"),
            ("127.0.0.1:-1", "bad_port"),
        ];
        for (value, expected) in cases {
            assert_eq!(kind(Format::HostPort, value), expected, "{value:?}");
        }
        assert_eq!(addresses(Format::HostPort, b"\xff:80"), Err(ValueError::NotUtf8));
        assert_eq!(addresses(Format::HostPort, b" localhost "), Err(ValueError::MissingPort("localhost".into())));
    }

    #[test]
    fn kratos_values() {
        let value = r#"{"id":"1","name":"helloworld","version":"v1","metadata":{},
            "endpoints":["http://127.0.0.1:8000","grpc://[::1]:9000?isSecure=false"]}"#;
        assert_eq!(addresses(Format::Kratos, value.as_bytes()), Ok(vec![ip("127.0.0.1:8000"), ip("[::1]:9000")]));

        let value = r#"{"endpoints":[
            " https://user:pa:ss@api.example.com:8443/v1/x?y=1#frag ",
            "grpc://10.0.0.1:9000/",
            "http://10.0.0.1:8000#top",
            "grpc://10.0.0.1:9000?isSecure=true",
            "http://[2001:db8::1]:80/path",
            "10.0.0.2:7000"
        ]}"#;
        assert_eq!(
            addresses(Format::Kratos, value.as_bytes()),
            Ok(vec![
                host("api.example.com", 8443),
                ip("10.0.0.1:9000"),
                ip("10.0.0.1:8000"),
                ip("[2001:db8::1]:80"),
                ip("10.0.0.2:7000"),
            ])
        );
    }

    #[test]
    fn kratos_errors() {
        for value in [r#"{"endpoints":[]}"#, r#"{"endpoints":null}"#, r#"{"id":"1"}"#] {
            assert_eq!(kind(Format::Kratos, value), "no_endpoints", "{value}");
        }
        for value in ["", "not json", "[]", r#"{"endpoints":"http://a:1"}"#, r#"{"endpoints":[1]}"#] {
            assert_eq!(kind(Format::Kratos, value), "json", "{value}");
        }
        let url = "http://127.0.0.1/path";
        assert_eq!(
            addresses(Format::Kratos, format!(r#"{{"endpoints":["grpc://10.0.0.1:9000","{url}"]}}"#).as_bytes()),
            Err(ValueError::MissingPort(url.into())),
            "one bad endpoint spoils the value, and the error names the URL"
        );
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["grpc://[::1?x=1"]}"#), "bad_address");
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["grpc://"]}"#), "bad_address");
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["://a:1"]}"#), "bad_address");
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["1http://a:1"]}"#), "bad_address");
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["http://u@:80"]}"#), "bad_address");
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["http://a:0/"]}"#), "bad_port");
        assert_eq!(kind(Format::Kratos, r#"{"endpoints":["http://[::1]"]}"#), "missing_port");
        assert_eq!(addresses(Format::Kratos, b"{\"endpoints\":[\"\xff\"]}"), Err(ValueError::NotUtf8));
    }

    #[test]
    fn naming_values() {
        let a = |v: &str| addresses(Format::Naming, v.as_bytes());
        assert_eq!(a(r#"{"Op":0,"Addr":"127.0.0.1:8080","Metadata":null}"#), Ok(vec![ip("127.0.0.1:8080")]));
        assert_eq!(a(r#" {"Addr":" [::1]:8080 ","Metadata":{"w":1}} "#), Ok(vec![ip("[::1]:8080")]));
        assert_eq!(a(r#"{"Addr":"svc.local:8080","Op":"x"}"#), Ok(vec![host("svc.local", 8080)]));
        assert_eq!(a(r#"{"Op":1,"Addr":"127.0.0.1:8080"}"#), Err(ValueError::Deleted));
        assert_eq!(a(r#"{"Op":1}"#), Err(ValueError::Deleted));
        assert_eq!(kind(Format::Naming, r#"{"Op":0}"#), "json");
        assert_eq!(kind(Format::Naming, r#"{"Addr":8080}"#), "json");
        assert_eq!(kind(Format::Naming, "127.0.0.1:8080"), "json");
        assert_eq!(kind(Format::Naming, r#"[1,"127.0.0.1:8080"]"#), "json");
        assert_eq!(kind(Format::Naming, "null"), "json");
        assert_eq!(kind(Format::Naming, r#"{"Addr":"127.0.0.1"}"#), "missing_port");
        assert_eq!(kind(Format::Naming, r#"{"Addr":"127.0.0.1:99999"}"#), "bad_port");
        assert_eq!(kind(Format::Naming, r#"{"Addr":""}"#), "bad_address");
        assert_eq!(addresses(Format::Naming, b"\xfe"), Err(ValueError::NotUtf8));
    }

    #[test]
    fn every_kind_has_its_label_and_a_message() {
        let all = [
            (ValueError::NotUtf8, "not_utf8"),
            (ValueError::Json("x".into()), "json"),
            (ValueError::NoEndpoints, "no_endpoints"),
            (ValueError::MissingPort("a".into()), "missing_port"),
            (ValueError::BadPort("a".into()), "bad_port"),
            (ValueError::BadAddress("a".into()), "bad_address"),
            (ValueError::Deleted, "deleted"),
        ];
        for (e, label) in all {
            assert_eq!(e.kind(), label);
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(ValueError::MissingPort("h".into()).to_string(), r#"no port in address "h""#);
    }

    #[test]
    fn duplicates_are_removed_in_order() {
        let value = r#"{"endpoints":["grpc://10.0.0.1:9000","http://h:1","grpc://10.0.0.1:9000?x","http://u@h:1/p"]}"#;
        assert_eq!(addresses(Format::Kratos, value.as_bytes()), Ok(vec![ip("10.0.0.1:9000"), host("h", 1)]));
    }

    #[test]
    fn service_and_id_cases() {
        assert_eq!(service_and_id("/microservices", "/microservices/helloworld/abc"), Some(("helloworld", "abc")));
        assert_eq!(service_and_id("/services/", "/services/user.rpc/7587868"), Some(("user.rpc", "7587868")));
        assert_eq!(service_and_id("/microservices", "/microservices/helloworld"), None);
        assert_eq!(service_and_id("/microservices", "/microservicesX/a/b"), None);
        assert_eq!(service_and_id("/microservices/", "/microservicesX/a/b"), None);
        assert_eq!(service_and_id("/microservices", "/microservices/svc/a/b/"), Some(("svc", "a/b/")));
        assert_eq!(service_and_id("/microservices", "/microservices/svc/"), None);
        assert_eq!(service_and_id("/microservices", "/microservices//abc"), None);
        assert_eq!(service_and_id("/microservices", "/other/svc/abc"), None);
        assert_eq!(service_and_id("/", "/svc/abc"), Some(("svc", "abc")));
        assert_eq!(service_and_id("", "user.rpc/7587868"), Some(("user.rpc", "7587868")));
        assert_eq!(service_and_id("", "/user.rpc/7587868"), Some(("user.rpc", "7587868")));
        assert_eq!(service_and_id("/", "user.rpc/7587868"), None);
    }

    /// Socket addresses as text can carry: any IP, a port other than 0,
    /// and an IPv6 scope id but no flow info.
    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        (any::<IpAddr>(), 1..=u16::MAX, prop_oneof![Just(0u32), any::<u32>()]).prop_map(|(ip, port, scope)| match ip {
            IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)),
        })
    }

    fn format() -> impl Strategy<Value = Format> {
        prop_oneof![Just(Format::Kratos), Just(Format::HostPort), Just(Format::Naming)]
    }

    /// Text made of the characters addresses and URLs are made of.
    fn address_text() -> impl Strategy<Value = String> {
        "[a-f0-9:.\\[\\]@/?#%_ -]{0,40}|[a-z]{1,5}://[a-f0-9:.\\[\\]@%_-]{0,30}"
    }

    fn check_ok(result: &Result<Vec<Address>, ValueError>) {
        if let Ok(list) = result {
            assert!(!list.is_empty());
            assert_eq!(list.iter().collect::<HashSet<_>>().len(), list.len(), "duplicates in {list:?}");
            for a in list {
                match a {
                    Address::Ip(addr) => assert_ne!(addr.port(), 0),
                    Address::Host(h, port) => assert!(!h.is_empty() && *port != 0),
                }
            }
        }
    }

    proptest! {
        #[test]
        fn host_port_of_any_socket_addr(addr in socket_addr()) {
            prop_assert_eq!(addresses(Format::HostPort, addr.to_string().as_bytes()), Ok(vec![Address::Ip(addr)]));
        }

        #[test]
        fn kratos_gives_endpoints_back_deduplicated(
            pool in prop::collection::vec(socket_addr(), 1..6),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..12),
        ) {
            let addrs: Vec<SocketAddr> = picks.iter().map(|i| *i.get(&pool)).collect();
            let endpoints: Vec<String> = addrs.iter().map(|a| format!("grpc://{a}")).collect();
            let value = serde_json::json!({ "id": "1", "name": "svc", "endpoints": endpoints }).to_string();
            let mut expected: Vec<Address> = Vec::new();
            for a in addrs {
                if !expected.contains(&Address::Ip(a)) {
                    expected.push(Address::Ip(a));
                }
            }
            prop_assert_eq!(addresses(Format::Kratos, value.as_bytes()), Ok(expected));
        }

        #[test]
        fn never_panics_on_bytes(format in format(), value in prop::collection::vec(any::<u8>(), 0..200)) {
            check_ok(&addresses(format, &value));
        }

        #[test]
        fn never_panics_on_address_like_text(format in format(), text in address_text()) {
            let json = serde_json::Value::String(text.clone());
            for value in [text.clone(), format!(r#"{{"endpoints":[{json}]}}"#), format!(r#"{{"Addr":{json}}}"#)] {
                check_ok(&addresses(format, value.as_bytes()));
            }
        }

        #[test]
        fn service_and_id_splits_what_it_joins(
            prefix in "(/[a-z]{1,8}){0,3}/?",
            service in "[a-z.]{1,8}",
            id in "[a-z0-9]{1,8}(/[a-z0-9]{1,8})?",
        ) {
            let base = prefix.trim_end_matches('/');
            let key = format!("{base}/{service}/{id}");
            prop_assert_eq!(service_and_id(&prefix, &key), Some((service.as_str(), id.as_str())));
        }
    }
}
