use std::time::Duration;

use serde_json::{json, Value};

use super::*;

const OCT_JWKS: &str =
    r#"{"keys":[{"kty":"oct","kid":"k","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;

/// The example from design.md, with the `partner` provider it names defined.
pub(super) fn design_example() -> Value {
    json!({
      "providers": {
        "corp": {
          "issuer": "https://idp.example.com",
          "audiences": ["orders-api"],
          "remote_jwks": {"cluster": "idp", "uri": "http://idp.example.com/jwks.json", "timeout": "1s", "cache_duration": "10m"},
          "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
          "from_params": ["access_token"],
          "from_cookies": ["session"],
          "forward": false,
          "forward_payload_header": "x-jwt-payload",
          "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
          "clock_skew": "60s",
          "algorithms": ["RS256", "ES256"]
        },
        "partner": {"issuer": "https://partner.example.com", "local_jwks": {"inline": OCT_JWKS}}
      },
      "rate_limits": {
        "per_user": {"key": ["claim:sub"], "token_bucket": {"max_tokens": 20, "tokens_per_fill": 10, "fill_interval": "1s"}},
        "per_ip": {"key": ["client_ip"], "token_bucket": {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1m"}, "mode": "delay", "max_delay": "500ms"},
        "trial": {"key": ["claim:sub"], "shadow": true, "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "1s"}},
        "global": {"key": ["header:x-api-key"], "service": {"cluster": "ratelimit", "domain": "meshguard", "timeout": "100ms", "failure_mode_deny": false}}
      },
      "rules": [
        {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": true},
        {"name": "writes", "match": {"prefix": "/api/", "methods": ["POST", "PUT", "DELETE"]}, "requires": {"any": ["corp", "partner"]}, "rate_limits": ["per_user", "global"]},
        {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp", "rate_limits": ["per_ip"]}
      ],
      "unmatched": "deny",
      "access_log": {"enabled": true, "sample_rate": 1.0, "request_headers": ["user-agent", "x-request-id"]}
    })
}

/// `config::parse`, after holding the reader to serde's derive on the same text: every
/// configuration these tests write is read as serde read it.
fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    let _ = super::read::tests::reads_as_serde_did(json);
    super::parse(json)
}

fn parse_value(value: &Value) -> Result<Config, ConfigError> {
    parse(value.to_string().as_bytes())
}

fn error_of(change: impl FnOnce(&mut Value)) -> String {
    let mut value = design_example();
    change(&mut value);
    parse_value(&value).unwrap_err().to_string()
}

#[test]
fn the_design_example_parses_into_checked_types() {
    let config = parse_value(&design_example()).unwrap();
    let corp = &config.providers[config.provider_index("corp").unwrap()];
    let KeySource::Remote(remote) = &corp.keys else {
        panic!("corp is remote")
    };
    assert_eq!(remote.authority, "idp.example.com");
    assert_eq!(remote.path, "/jwks.json");
    assert_eq!(remote.timeout, Duration::from_secs(1));
    assert_eq!(corp.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
    assert_eq!(
        config.output_headers,
        vec!["x-user".to_string(), "x-jwt-payload".to_string()]
    );
    let writes = &config.rules[1];
    assert_eq!(writes.matcher.methods, vec!["POST", "PUT", "DELETE"]);
    assert_eq!(writes.rate_limits.len(), 2);
    let Access::Requires(requirement) = &writes.access else {
        panic!()
    };
    assert!(matches!(&requirement.kind, RequirementKind::Any(items) if items.len() == 2));
    let per_ip = config
        .rate_limits
        .iter()
        .find(|p| p.name == "per_ip")
        .unwrap();
    assert_eq!(
        per_ip.mode,
        LimitMode::Delay {
            max_delay: Duration::from_millis(500)
        }
    );
    assert_eq!(per_ip.key, vec![KeyPart::ClientIp]);
    let global = config
        .rate_limits
        .iter()
        .find(|p| p.name == "global")
        .unwrap();
    assert!(
        matches!(&global.limit, Limit::Service(s) if s.domain == "meshguard" && !s.failure_mode_deny)
    );
    assert_eq!(
        config.access_log.request_headers,
        vec!["user-agent", "x-request-id"]
    );
}

#[test]
fn defaults_follow_envoy() {
    let config = parse_value(&json!({
        "providers": {"p": {"issuer": "i", "remote_jwks": {"cluster": "c", "uri": "https://idp/keys"}}},
        "rules": [{"name": "r", "match": {}, "requires": "p"}]
    }))
    .unwrap();
    let provider = &config.providers[0];
    assert_eq!(provider.clock_skew, Duration::from_secs(60));
    assert_eq!(provider.locations.headers[0].name, "authorization");
    assert_eq!(provider.locations.headers[0].value_prefix, "Bearer ");
    assert_eq!(provider.locations.params, vec!["access_token"]);
    assert!(!provider.forward);
    let KeySource::Remote(remote) = &provider.keys else {
        panic!()
    };
    assert_eq!(
        (remote.timeout, remote.cache_duration),
        (Duration::from_secs(1), Duration::from_secs(600))
    );
    assert_eq!(config.unmatched, Unmatched::Deny);
    assert!(config.access_log.enabled);
    assert!(config.access_log.filter_state, "exported unless turned off");
}

#[test]
fn filter_state_export_can_be_turned_off() {
    let mut value = design_example();
    value["access_log"]["filter_state"] = json!(false);
    let config = parse(value.to_string().as_bytes()).expect("valid");
    assert!(!config.access_log.filter_state);
    assert!(
        config.access_log.enabled,
        "the own log is a separate switch"
    );
}

#[test]
fn errors_name_the_json_path_and_the_reason() {
    type Change = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|v| v["providers"]["corp"]["remote_jwks"]["timeout"] = json!("1 sec")),
            "providers.corp.remote_jwks.timeout: invalid duration \"1 sec\"",
        ),
        (
            Box::new(|v| v["providers"]["corp"]["remote_jwks"]["timeout"] = json!("0s")),
            "providers.corp.remote_jwks.timeout: must be more than zero",
        ),
        (
            Box::new(|v| v["providers"]["corp"]["remote_jwks"]["uri"] = json!("ftp://x")),
            "providers.corp.remote_jwks.uri: \"ftp://x\" must start with http:// or https://",
        ),
        (
            Box::new(|v| v["providers"]["corp"]["local_jwks"] = json!({"inline": OCT_JWKS})),
            "providers.corp: set either local_jwks or remote_jwks, not both",
        ),
        (
            Box::new(|v| {
                drop(
                    v["providers"]["partner"]
                        .as_object_mut()
                        .unwrap()
                        .remove("local_jwks"),
                )
            }),
            "providers.partner: needs local_jwks or remote_jwks",
        ),
        (
            Box::new(|v| v["providers"]["corp"]["algorithms"] = json!(["HS256"])),
            "providers.corp.algorithms[0]: HMAC algorithms need an oct key in local_jwks",
        ),
        (
            Box::new(|v| {
                v["providers"]["corp"]["claim_to_headers"][0]["header_name"] = json!("x user")
            }),
            "providers.corp.claim_to_headers[0].header_name: \"x user\" is not a valid header name",
        ),
        (
            Box::new(|v| v["rules"][0]["requires"] = json!("corp")),
            "rules[0]: set either requires or allow_unauthenticated, not both",
        ),
        (
            Box::new(|v| drop(v["rules"][1].as_object_mut().unwrap().remove("requires"))),
            "rules[1]: set requires",
        ),
        (
            Box::new(|v| v["rules"][1]["requires"] = json!({"any": []})),
            "rules[1].requires.any: must not be empty",
        ),
        (
            Box::new(|v| v["rules"][1]["requires"] = json!({"one": ["corp"]})),
            "rules[1].requires.one: unknown field `one`",
        ),
        (
            Box::new(|v| v["rules"][1]["requires"] = json!(7)),
            "rules[1].requires: must be a provider name",
        ),
        (
            Box::new(|v| v["rules"][2]["name"] = json!("writes")),
            "rules[2].name: \"writes\" is already the name of rules[1]",
        ),
        (
            Box::new(|v| v["rules"][2]["match"]["path"] = json!("/x")),
            "rules[2].match: set either path or prefix, not both",
        ),
        (
            Box::new(|v| v["rules"][0]["match"]["path"] = json!("healthz")),
            "rules[0].match.path: \"healthz\" must start with /",
        ),
        (
            Box::new(|v| v["rate_limits"]["per_ip"]["mode"] = json!("queue")),
            "rate_limits.per_ip.mode: \"queue\" is not \"reject\" or \"delay\"",
        ),
        (
            Box::new(|v| {
                drop(
                    v["rate_limits"]["per_ip"]
                        .as_object_mut()
                        .unwrap()
                        .remove("max_delay"),
                )
            }),
            "rate_limits.per_ip: mode \"delay\" needs max_delay",
        ),
        (
            Box::new(|v| v["rate_limits"]["per_user"]["max_delay"] = json!("1s")),
            "rate_limits.per_user.max_delay: only applies to mode \"delay\"",
        ),
        (
            Box::new(|v| v["rate_limits"]["per_user"]["token_bucket"]["max_tokens"] = json!(0)),
            "rate_limits.per_user.token_bucket.max_tokens: must be at least 1",
        ),
        (
            Box::new(|v| v["rate_limits"]["per_user"]["token_bucket"]["max_tokens"] = json!(-1)),
            "rate_limits.per_user.token_bucket.max_tokens: invalid value",
        ),
        (
            Box::new(|v| {
                v["rate_limits"]["global"]["token_bucket"] =
                    json!({"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"})
            }),
            "rate_limits.global: set either token_bucket or service, not both",
        ),
        (
            Box::new(|v| v["rate_limits"]["per_user"]["key"] = json!([])),
            "rate_limits.per_user.key: must not be empty",
        ),
        (
            Box::new(|v| v["rate_limits"]["per_user"]["key"] = json!(["header:"])),
            "rate_limits.per_user.key[0]: \"header:\" needs a name",
        ),
        (
            Box::new(|v| v["access_log"]["sample_rate"] = json!(1.5)),
            "access_log.sample_rate: 1.5 is not between 0 and 1",
        ),
        (
            Box::new(|v| v["unmatched"] = json!("maybe")),
            "unmatched: \"maybe\" is not \"deny\" or \"allow\"",
        ),
        (
            Box::new(|v| v["access_log"]["format"] = json!("text")),
            "access_log.format: unknown field `format`",
        ),
    ];
    for (change, expected) in cases {
        let error = error_of(change);
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    }
}

#[test]
fn explicit_but_empty_token_locations_are_an_error() {
    let error = error_of(|v| {
        v["providers"]["corp"]["from_headers"] = json!([]);
        v["providers"]["corp"]["from_params"] = json!([]);
        v["providers"]["corp"]["from_cookies"] = json!([]);
    });
    assert!(error.contains("no token could ever be found"), "{error}");
}

#[test]
fn text_that_is_not_one_json_object_is_refused() {
    for bad in ["", "providers: {}", "{} {}", "[]", "{\"providers\": 1}"] {
        assert!(
            parse(bad.as_bytes()).is_err(),
            "{bad:?} parsed: {:?}",
            parse(bad.as_bytes())
        );
    }
    assert!(
        parse(b"{}").is_ok(),
        "an empty config is valid: it denies everything"
    );
}

#[test]
fn allow_missing_on_the_rule_applies_to_its_requirement() {
    let mut value = design_example();
    value["rules"][2]["allow_missing"] = json!(true);
    let config = parse_value(&value).unwrap();
    let Access::Requires(requirement) = &config.rules[2].access else {
        panic!()
    };
    assert!(requirement.allow_missing);
}

#[test]
fn token_and_payload_headers_are_never_logged_even_when_listed() {
    let mut value = design_example();
    value["providers"]["partner"]["from_headers"] = json!([{"name": "x-jwt"}]);
    value["access_log"]["request_headers"] = json!([
        "user-agent",
        "x-jwt",
        "x-jwt-payload",
        "authorization",
        "Cookie",
        "x-user"
    ]);
    let config = parse_value(&value).unwrap();
    assert_eq!(
        config.access_log.request_headers,
        vec!["user-agent", "x-user"]
    );
}

#[test]
fn hosts_are_kept_without_case_or_a_trailing_dot() {
    let mut value = design_example();
    value["rules"][0]["match"]["hosts"] = json!(["Admin.Example.com."]);
    let config = parse_value(&value).unwrap();
    assert_eq!(
        config.rules[0].matcher.hosts,
        vec![crate::authz::pattern::TextPattern::Exact(
            "admin.example.com".into()
        )]
    );
}

#[test]
fn authorization_errors_name_the_json_path_and_the_reason() {
    let when = |conditions: Value| error_of(move |v| v["rules"][2]["when"] = conditions);
    let cases: Vec<(String, &str)> =
        vec![
        (
            when(json!([{"key": "request.auth.claim[groups]", "values": ["a"]}])),
            "rules[2].when[0].key: unknown key \"request.auth.claim[groups]\"",
        ),
        (
            when(json!([{"key": "request.auth.claims", "values": ["a"]}])),
            "rules[2].when[0].key: \"request.auth.claims\": a claim is named in brackets",
        ),
        (
            when(json!([{"key": "request.headers[x y]", "values": ["a"]}])),
            "rules[2].when[0].key: \"request.headers[x y]\": a header is named in brackets",
        ),
        (
            when(json!([{"key": "source.ip", "values": ["10.0.0.0/33"]}])),
            "rules[2].when[0].values[0]: \"10.0.0.0/33\": prefix length must be 0 to 32",
        ),
        (
            when(json!([{"key": "remote.ip", "not_values": ["nope"]}])),
            "rules[2].when[0].not_values[0]: \"nope\" is not an IP address or CIDR block",
        ),
        (
            when(json!([{"key": "destination.port", "values": ["http"]}])),
            "rules[2].when[0].values[0]: \"http\" is not a port number",
        ),
        (
            when(json!([{"key": "request.path", "values": ["/a/{**}/b"]}])),
            "rules[2].when[0].values[0]: \"/a/{**}/b\": {**} must be the last segment",
        ),
        (
            when(json!([{"key": "request.auth.principal"}])),
            "rules[2].when[0]: a `key` condition needs `values` or `not_values`",
        ),
        (
            when(json!([{"any": [{"scopes": ["a b"]}]}])),
            "rules[2].when[0].any[0].scopes[0]: a scope has no spaces",
        ),
        (
            when(json!([{"all": []}])),
            "rules[2].when[0].all: must be a non-empty list of conditions",
        ),
        (
            when(json!([{"not": {"max_lifetime": "an hour"}}])),
            "rules[2].when[0].not.max_lifetime: invalid duration \"an hour\"",
        ),
        (
            when(json!([{"scopes": ["a"], "any": [{"scopes": ["b"]}]}])),
            "rules[2].when[0]: set only one of scopes, any",
        ),
        (
            when(json!([{"scopes": ["a"], "values": ["b"]}])),
            "rules[2].when[0].values: only applies to a `key` condition",
        ),
        (
            when(json!([{"key": "request.method", "values": ["GET"], "dry_run": "yes"}])),
            "rules[2].when[0].dry_run: must be true or false",
        ),
        (
            when(json!([{"key": "request.method", "value": ["GET"]}])),
            "rules[2].when[0].value: unknown field `value`",
        ),
        (
            error_of(|v| v["rules"][0]["when"] = json!([{"scopes": ["x"]}])),
            "rules[0].when[0]: reads the token, but the rule is allow_unauthenticated",
        ),
        (
            error_of(|v| v["rules"][1]["action"] = json!("deny")),
            "rules[1].requires: only an allow rule has requires",
        ),
        (
            error_of(|v| v["rules"][1]["action"] = json!("reject")),
            "rules[1].action: \"reject\" is not \"allow\", \"deny\" or \"audit\"",
        ),
        (
            error_of(|v| {
                v["rules"].as_array_mut().unwrap().push(json!({"name": "x", "action": "reject"}))
            }),
            "rules[3].action: \"reject\" is not \"allow\", \"deny\" or \"audit\"",
        ),
        (
            error_of(|v| {
                v["rules"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "x", "action": "audit", "dry_run": true}))
            }),
            "rules[3].dry_run: an audit rule never refuses",
        ),
        (
            error_of(|v| {
                v["rules"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "health", "action": "deny"}))
            }),
            "rules[3].name: \"health\" is already the name of rules[0]",
        ),
        (
            error_of(|v| v["rules"][2]["match"]["paths"] = json!(["/a/x{*}"])),
            "rules[2].match.paths[0]: \"/a/x{*}\": {*} and {**} must each be a whole path segment",
        ),
        (
            error_of(|v| v["direct_peer_header"] = json!("x peer")),
            "direct_peer_header: \"x peer\" is not a valid header name",
        ),
        (
            error_of(|v| v["providers"]["corp"]["space_delimited_claims"] = json!([""])),
            "providers.corp.space_delimited_claims[0]: must not be empty",
        ),
    ];
    for (error, expected) in cases {
        assert!(
            error.starts_with(expected),
            "{error:?}\n  should start with {expected:?}"
        );
    }
}

#[test]
fn deeply_nested_conditions_are_refused_not_recursed_into() {
    let mut condition = json!({"scopes": ["a"]});
    for _ in 0..40 {
        condition = json!({"not": condition});
    }
    let error = error_of(move |v| v["rules"][2]["when"] = json!([condition]));
    assert!(
        error.contains("conditions nest deeper than 16 levels"),
        "{error}"
    );
}

#[test]
fn the_path_is_read_only_when_something_reads_it() {
    let reads_path = |value: Value| {
        parse(value.to_string().as_bytes())
            .expect("valid")
            .reads
            .path
    };
    assert!(
        reads_path(design_example()),
        "providers read query-parameter tokens"
    );
    assert!(!reads_path(json!({"unmatched": "allow"})));
    let open_rule = |rule: Value| json!({"rules": [rule], "unmatched": "deny"});
    assert!(!reads_path(open_rule(
        json!({"name": "gets", "match": {"methods": ["GET"]}, "allow_unauthenticated": true})
    )));
    for matcher in [
        json!({"prefix": "/api/"}),
        json!({"path": "/healthz"}),
        json!({"paths": ["/a/*"]}),
        json!({"not_paths": ["/admin"]}),
    ] {
        let rule = json!({"name": "r", "match": matcher, "allow_unauthenticated": true});
        assert!(reads_path(open_rule(rule)), "{matcher}");
    }
    let condition = json!({"name": "r", "allow_unauthenticated": true,
        "when": [{"not": {"key": "request.path", "values": ["/x"]}}]});
    assert!(reads_path(open_rule(condition)));
    let deny = json!({"rules": [
        {"name": "no", "action": "deny", "match": {"prefix": "/admin"}},
        {"name": "all", "allow_unauthenticated": true}]});
    assert!(reads_path(deny), "a deny rule's match");
    let keyed = json!({
        "rate_limits": {"p": {"key": ["path"], "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}}},
        "rules": [{"name": "all", "allow_unauthenticated": true, "rate_limits": ["p"]}]});
    assert!(reads_path(keyed), "a rate-limit key");
}
