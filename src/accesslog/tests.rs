use super::*;

fn exchange() -> Exchange {
    Exchange {
        start_ms: 1_700_000_000_123,
        end_ms: 1_700_000_000_168,
        request_id: Some("req-1".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        b3_trace_id: None,
        method: "GET".into(),
        path: "/api/orders?access_token=secret.token.value&page=2".into(),
        authority: "orders.svc".into(),
        status: Some(200),
        request_bytes: Some(120),
        response_bytes: Some(512),
        client_address: Some("10.0.0.7:5555".into()),
        headers: vec![
            ("user-agent".into(), "curl/8".into()),
            ("authorization".into(), "Bearer secret.token.value".into()),
            ("cookie".into(), "session=secret.token.value".into()),
        ],
    }
}

fn verdict() -> Verdict {
    Verdict {
        rule: Some("api".into()),
        provider: Some("corp".into()),
        subject: Some("alice".into()),
        decision: "allowed",
        reason: None,
        rate_limits: smallvec::smallvec![LimitEntry {
            policy: "per_user".into(),
            decision: "allowed",
            remaining: Some(4),
        }],
        authz: None,
    }
}

#[test]
fn renders_one_line_of_json_with_stable_fields() {
    let line = render(&exchange(), &verdict());
    assert!(!line.contains('\n'));
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(record["request_id"], "req-1");
    assert_eq!(record["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(record["path"], "/api/orders");
    assert_eq!(record["status"], 200);
    assert_eq!(record["duration_ms"], 45);
    assert_eq!(record["request_bytes"], 120);
    assert_eq!(record["client_address"], "10.0.0.7:5555");
    assert_eq!(record["rule"], "api");
    assert_eq!(record["provider"], "corp");
    assert_eq!(record["subject"], "alice");
    assert_eq!(record["decision"], "allowed");
    assert_eq!(record["rate_limits"][0]["policy"], "per_user");
    assert_eq!(record["rate_limits"][0]["remaining"], 4);
    assert_eq!(record["request_headers"]["user-agent"], "curl/8");
}

#[test]
fn secrets_and_the_query_never_reach_the_record() {
    let line = render(&exchange(), &verdict());
    assert!(!line.contains("secret"), "{line}");
    assert!(
        !line.contains("authorization") && !line.contains("cookie"),
        "{line}"
    );
    assert!(!line.contains("page=2"));
}

#[test]
fn b3_trace_ids_are_used_without_traceparent() {
    let mut exchange = exchange();
    exchange.traceparent = Some("garbage".into());
    exchange.b3_trace_id = Some("80f198ee56343ba864fe8b2a57d3eff7".into());
    let record: serde_json::Value = serde_json::from_str(&render(&exchange, &verdict())).unwrap();
    assert_eq!(record["trace_id"], "80f198ee56343ba864fe8b2a57d3eff7");
}

#[test]
fn dates_are_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
}

fn config(enabled: bool, sample_rate: f64) -> AccessLog {
    AccessLog {
        enabled,
        filter_state: true,
        byte_counts: true,
        sample_rate,
        request_headers: vec![],
    }
}

#[test]
fn denied_limited_and_failed_requests_are_always_logged() {
    let off = config(true, 0.0);
    let mut denied = verdict();
    denied.decision = "unauthenticated";
    assert!(should_log(&off, &denied, Some(401), "a"));
    let mut limited = verdict();
    limited.rate_limits[0].decision = "shadow_limited";
    assert!(should_log(&off, &limited, Some(200), "a"));
    assert!(should_log(&off, &verdict(), Some(503), "a"));
    assert!(!should_log(&off, &verdict(), Some(200), "a"));
    assert!(!should_log(&config(false, 1.0), &denied, Some(401), "a"));
}

#[test]
fn sampling_follows_the_rate() {
    let half = config(true, 0.5);
    let logged = (0..10_000)
        .filter(|i| should_log(&half, &verdict(), Some(200), &format!("req-{i}")))
        .count();
    assert!((4_500..5_500).contains(&logged), "{logged}");
    assert!(should_log(&config(true, 1.0), &verdict(), Some(200), "x"));
}

#[test]
fn bytes_that_are_not_utf8_are_logged_escaped() {
    assert_eq!(escaped(b"curl/8"), "curl/8");
    assert_eq!(escaped(b"a\\b"), "a\\b", "valid text is kept as it is");
    assert_eq!(escaped(b"caf\xe9"), "caf\\xe9");
    assert_eq!(
        escaped(b"\\xe9\xe9"),
        "\\\\xe9\\xe9",
        "a literal backslash is doubled"
    );
    assert_eq!(escaped(b"\xc3\xa9\xff"), "é\\xff");
}

#[test]
fn logged_headers_are_written_by_name_the_last_of_a_repeated_name_winning() {
    let mut exchange = exchange();
    exchange.headers = [
        ("x-tenant", "t1"),
        ("user-agent", "curl/8"),
        ("authorization", "Bearer secret"),
        ("accept", "*/*"),
        ("x-tenant", "t2"),
        ("x-b3", "b"),
        ("x-a", "a"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let line = render(&exchange, &verdict());
    // What a map keyed by name writes, as the record did with a `BTreeMap`.
    let by_name: std::collections::BTreeMap<&str, &str> = exchange
        .headers
        .iter()
        .filter(|(n, _)| !is_secret(n))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let expected = format!(
        "\"request_headers\":{}}}",
        serde_json::to_string(&by_name).unwrap()
    );
    assert!(line.ends_with(&expected), "{line}");
    assert!(line.contains(r#""request_headers":{"accept":"*/*","user-agent":"curl/8","x-a":"a","x-b3":"b","x-tenant":"t2"}"#));
}
