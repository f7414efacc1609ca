//! The pluginConfig JSON -> the `Raw*` structs of `raw.rs`, by hand over the tree of `tree.rs`,
//! saying exactly what serde's derive said (its messages are part of the contract: "path:
//! message"). The derive stays for the tests, which hold the two to the same answers, and for
//! the CLI's schema; the filter does not carry it (its visitors were ~66 KB of the .wasm, this
//! reader and `tree.rs` are ~26 KB: the module went from 733,647 to 684,140 bytes).
//!
//! Two passes. [`check`] walks the tree against [`CONFIG`], a table of the structs' fields and
//! their kinds, and stops at the first error in document order, as serde's streaming did: each
//! object's members in order (an unknown name, a name given twice, then the value), then the
//! fields it lacks in declaration order; where the text stops being JSON, that error comes only
//! if nothing before it was wrong. Then [`build_config`] builds the structs from the checked
//! tree, which cannot fail.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::time::Duration;

use serde::de::{Error as _, Unexpected};
use serde_json::{Error as Message, Map, Number, Value};

use super::duration::{self, parse_duration, ConfigDuration};
use super::json_path;
use super::raw::*;
use super::tree::{self, Node, Tail};
use super::ConfigError;

/// Reads a pluginConfig document into its raw structs, or says what is wrong and where.
pub(super) fn raw_config(json: &[u8]) -> Result<RawConfig, ConfigError> {
    // serde would also read a struct from a JSON array; the contract is an object.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ConfigError::new(
            "",
            "the configuration must be a JSON object",
        ));
    }
    let tree = tree::parse(json);
    let message = |error: &serde_json::Error| without_position(&error.to_string());
    match (
        check(&tree.root, &Path::Root, &Kind::Struct(&CONFIG)),
        &tree.error,
    ) {
        (Ok(()), None) => Ok(build_config(Some(&tree.root))),
        // Text after the document's object.
        (Ok(()), Some(error)) => Err(ConfigError::new("", message(error))),
        (Err(Stop::Invalid(error)), _) => Err(error),
        (Err(Stop::Syntax), Some(error)) => Err(ConfigError::new(
            json_path::path_of(json, error),
            message(error),
        )),
        // The tree is broken only where serde_json stopped with an error.
        (Err(Stop::Syntax), None) => Err(ConfigError::new("", "not JSON")),
    }
}

/// serde_json appends " at line L column C"; the JSON path says more.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

/// What a value must be, as the `Raw*` structs declare it.
enum Kind {
    /// `String`
    Text,
    /// `bool`
    Flag,
    /// `u64`
    Count,
    /// `u16`
    Port,
    /// `f64`
    Fraction,
    /// `ConfigDuration`
    Duration,
    /// `serde_json::Value`: read in `validate.rs`.
    Any,
    /// `Option<_>`: `null` is `None`.
    Option(&'static Kind),
    /// `Vec<_>`
    List(&'static Kind),
    /// `BTreeMap<String, _>`: a name given twice keeps its last value.
    Map(&'static Kind),
    Struct(&'static Shape),
}

/// One of the `Raw*` structs as serde's derive sees it.
struct Shape {
    /// Its name in serde's messages.
    name: &'static str,
    /// In declaration order.
    fields: &'static [Field],
}

struct Field {
    name: &'static str,
    kind: Kind,
    absent: Absent,
}

/// What a field left out means.
#[derive(PartialEq, Eq)]
enum Absent {
    /// An error.
    Missing,
    /// `None`, for an `Option` (but a struct read from an array must give it).
    None,
    /// Its `Default`: `#[serde(default)]`.
    Default,
}

impl Field {
    const fn required(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            absent: Absent::Missing,
        }
    }

    const fn optional(name: &'static str, kind: &'static Kind) -> Field {
        Field {
            name,
            kind: Kind::Option(kind),
            absent: Absent::None,
        }
    }

    const fn defaulted(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            absent: Absent::Default,
        }
    }
}

const TEXTS: Kind = Kind::List(&Kind::Text);

const CONFIG: Shape = Shape {
    name: "struct RawConfig",
    fields: &[
        Field::defaulted("providers", Kind::Map(&Kind::Struct(&PROVIDER))),
        Field::defaulted("rate_limits", Kind::Map(&Kind::Struct(&RATE_LIMIT))),
        Field::defaulted("rules", Kind::List(&Kind::Struct(&RULE))),
        Field::defaulted("unmatched", Kind::Option(&Kind::Text)),
        Field::defaulted("access_log", Kind::Option(&Kind::Struct(&ACCESS_LOG))),
        Field::defaulted("bypass_cors_preflight", Kind::Flag),
        Field::optional("direct_peer_header", &Kind::Text),
    ],
};

const PROVIDER: Shape = Shape {
    name: "struct RawProvider",
    fields: &[
        Field::required("issuer", Kind::Text),
        Field::defaulted("audiences", TEXTS),
        Field::optional("remote_jwks", &Kind::Struct(&REMOTE_JWKS)),
        Field::optional("local_jwks", &Kind::Struct(&LOCAL_JWKS)),
        Field::optional("from_headers", &Kind::List(&Kind::Struct(&HEADER_LOCATION))),
        Field::optional("from_params", &TEXTS),
        Field::optional("from_cookies", &TEXTS),
        Field::defaulted("forward", Kind::Flag),
        Field::optional("forward_payload_header", &Kind::Text),
        Field::defaulted(
            "claim_to_headers",
            Kind::List(&Kind::Struct(&CLAIM_TO_HEADER)),
        ),
        Field::optional("clock_skew", &Kind::Duration),
        Field::defaulted("algorithms", Kind::Option(&TEXTS)),
        Field::defaulted("require_expiration", Kind::Flag),
        Field::defaulted("space_delimited_claims", TEXTS),
    ],
};

const REMOTE_JWKS: Shape = Shape {
    name: "struct RawRemoteJwks",
    fields: &[
        Field::required("cluster", Kind::Text),
        Field::required("uri", Kind::Text),
        Field::optional("timeout", &Kind::Duration),
        Field::optional("cache_duration", &Kind::Duration),
    ],
};

const LOCAL_JWKS: Shape = Shape {
    name: "struct RawLocalJwks",
    fields: &[Field::required("inline", Kind::Text)],
};

const HEADER_LOCATION: Shape = Shape {
    name: "struct RawHeaderLocation",
    fields: &[
        Field::required("name", Kind::Text),
        Field::defaulted("value_prefix", Kind::Text),
    ],
};

const CLAIM_TO_HEADER: Shape = Shape {
    name: "struct RawClaimToHeader",
    fields: &[
        Field::required("claim_name", Kind::Text),
        Field::required("header_name", Kind::Text),
    ],
};

const RATE_LIMIT: Shape = Shape {
    name: "struct RawRateLimit",
    fields: &[
        Field::required("key", Kind::Any),
        Field::optional("token_bucket", &Kind::Struct(&TOKEN_BUCKET)),
        Field::defaulted("mode", Kind::Option(&Kind::Text)),
        Field::optional("max_delay", &Kind::Duration),
        Field::defaulted("shadow", Kind::Flag),
        Field::optional("service", &Kind::Struct(&RATE_LIMIT_SERVICE)),
        Field::defaulted("enable_ratelimit_headers", Kind::Flag),
    ],
};

const TOKEN_BUCKET: Shape = Shape {
    name: "struct RawTokenBucket",
    fields: &[
        Field::required("max_tokens", Kind::Count),
        Field::required("tokens_per_fill", Kind::Count),
        Field::required("fill_interval", Kind::Duration),
    ],
};

const RATE_LIMIT_SERVICE: Shape = Shape {
    name: "struct RawRateLimitService",
    fields: &[
        Field::required("cluster", Kind::Text),
        Field::required("domain", Kind::Text),
        Field::optional("timeout", &Kind::Duration),
        Field::defaulted("failure_mode_deny", Kind::Flag),
    ],
};

const RULE: Shape = Shape {
    name: "struct RawRule",
    fields: &[
        Field::required("name", Kind::Text),
        Field::defaulted("action", Kind::Option(&Kind::Text)),
        Field::defaulted("match", Kind::Struct(&MATCH)),
        Field::defaulted("when", Kind::Option(&Kind::List(&Kind::Any))),
        Field::defaulted("dry_run", Kind::Flag),
        Field::defaulted("requires", Kind::Option(&Kind::Any)),
        Field::defaulted("allow_missing", Kind::Flag),
        Field::defaulted("allow_unauthenticated", Kind::Flag),
        Field::defaulted("rate_limits", TEXTS),
    ],
};

const MATCH: Shape = Shape {
    name: "struct RawMatch",
    fields: &[
        Field::optional("path", &Kind::Text),
        Field::optional("prefix", &Kind::Text),
        Field::optional("paths", &TEXTS),
        Field::optional("not_paths", &TEXTS),
        Field::optional("methods", &TEXTS),
        Field::optional("not_methods", &TEXTS),
        Field::optional("hosts", &TEXTS),
        Field::optional("not_hosts", &TEXTS),
        Field::optional("ports", &Kind::List(&Kind::Port)),
        Field::optional("not_ports", &Kind::List(&Kind::Port)),
        Field::optional("headers", &Kind::Map(&Kind::Text)),
    ],
};

const ACCESS_LOG: Shape = Shape {
    name: "struct RawAccessLog",
    fields: &[
        Field::optional("enabled", &Kind::Flag),
        Field::optional("filter_state", &Kind::Flag),
        Field::optional("byte_counts", &Kind::Flag),
        Field::defaulted("sample_rate", Kind::Option(&Kind::Fraction)),
        Field::defaulted("request_headers", TEXTS),
    ],
};

/// Why checking stopped.
enum Stop {
    /// At the place where the text stops being JSON: the tree's error is the answer.
    Syntax,
    Invalid(ConfigError),
}

type Checked = Result<(), Stop>;

/// Where a value is, as the errors name it (`rules[0].match.path`); built as the check goes
/// down, written out only for an error.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Path::Root => {}
            Path::Key(parent, key) => {
                parent.write(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Index(parent, index) => {
                parent.write(out);
                let _ = write!(out, "[{index}]");
            }
        }
    }

    fn fail(&self, reason: impl Display) -> Checked {
        let mut path = String::new();
        self.write(&mut path);
        Err(Stop::Invalid(ConfigError::new(path, reason.to_string())))
    }
}

/// Whether `node` is what `kind` says, with serde's message where it is not.
fn check(node: &Node, path: &Path, kind: &Kind) -> Checked {
    match (kind, node) {
        (_, Node::Broken) => Err(Stop::Syntax),
        (Kind::Text, Node::Str(_))
        | (Kind::Flag, Node::Bool(_))
        | (Kind::Count, Node::U64(_))
        | (Kind::Fraction, Node::U64(_) | Node::I64(_) | Node::F64(_))
        | (Kind::Option(_), Node::Null) => Ok(()),
        // serde_json reads a number as i64 only when it is negative.
        (Kind::Count, Node::I64(v)) => {
            path.fail(Message::invalid_value(Unexpected::Signed(*v), &"u64"))
        }
        (Kind::Port, Node::U64(v)) if u16::try_from(*v).is_ok() => Ok(()),
        (Kind::Port, Node::U64(v)) => {
            path.fail(Message::invalid_value(Unexpected::Unsigned(*v), &"u16"))
        }
        (Kind::Port, Node::I64(v)) => {
            path.fail(Message::invalid_value(Unexpected::Signed(*v), &"u16"))
        }
        (Kind::Duration, Node::Str(text)) => match parse_duration(text) {
            Ok(_) => Ok(()),
            Err(reason) => path.fail(reason),
        },
        (Kind::Any, _) => whole(node),
        (Kind::Option(inner), _) => check(node, path, inner),
        (Kind::List(item), Node::Array(items, tail)) => {
            for (index, value) in items.iter().enumerate() {
                check(value, &Path::Index(path, index), item)?;
            }
            closed(*tail)
        }
        (Kind::Map(item), Node::Object(members, tail)) => {
            for (name, value) in members {
                check(value, &Path::Key(path, name), item)?;
            }
            closed(*tail)
        }
        (Kind::Struct(shape), Node::Object(members, tail)) => {
            check_members(members, *tail, path, shape)
        }
        (Kind::Struct(shape), Node::Array(items, tail)) => check_items(items, *tail, path, shape),
        (kind, node) => {
            let expected = match kind {
                Kind::Text => "a string",
                Kind::Flag => "a boolean",
                Kind::Count => "u64",
                Kind::Port => "u16",
                Kind::Fraction => "f64",
                Kind::Duration => duration::EXPECTED,
                Kind::List(_) => "a sequence",
                Kind::Map(_) => "a map",
                Kind::Struct(shape) => shape.name,
                // Matched above.
                Kind::Any | Kind::Option(_) => "",
            };
            path.fail(Message::invalid_type(unexpected(node), &expected))
        }
    }
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match node {
        Node::Null => Unexpected::Unit,
        Node::Bool(v) => Unexpected::Bool(*v),
        Node::U64(v) => Unexpected::Unsigned(*v),
        Node::I64(v) => Unexpected::Signed(*v),
        Node::F64(v) => Unexpected::Float(*v),
        Node::Str(v) => Unexpected::Str(v),
        Node::Array(..) => Unexpected::Seq,
        Node::Object(..) => Unexpected::Map,
        // `check` stops at a broken node before asking.
        Node::Broken => Unexpected::Other("the end of the JSON"),
    }
}

fn closed(tail: Tail) -> Checked {
    match tail {
        Tail::Closed => Ok(()),
        Tail::Broken | Tail::BrokenAtEnd => Err(Stop::Syntax),
    }
}

/// A subtree read as it is: whole JSON.
fn whole(node: &Node) -> Checked {
    match node {
        Node::Broken => Err(Stop::Syntax),
        Node::Array(items, tail) => {
            items.iter().try_for_each(whole)?;
            closed(*tail)
        }
        Node::Object(members, tail) => {
            members.iter().try_for_each(|(_, value)| whole(value))?;
            closed(*tail)
        }
        _ => Ok(()),
    }
}

/// A struct from an object: unknown and repeated names refused as they come, then the fields
/// it lacks.
fn check_members(members: &[(String, Node)], tail: Tail, path: &Path, shape: &Shape) -> Checked {
    let mut seen: Vec<&str> = Vec::with_capacity(members.len());
    for (name, value) in members {
        let Some(field) = shape.fields.iter().find(|field| field.name == name) else {
            return Path::Key(path, name).fail(unknown_field(name, shape));
        };
        if seen.contains(&field.name) {
            return path.fail(Message::duplicate_field(field.name));
        }
        seen.push(field.name);
        check(value, &Path::Key(path, name), &field.kind)?;
    }
    closed(tail)?;
    match shape
        .fields
        .iter()
        .find(|field| field.absent == Absent::Missing && !seen.contains(&field.name))
    {
        Some(field) => path.fail(Message::missing_field(field.name)),
        None => Ok(()),
    }
}

/// serde's words (`de::Error::unknown_field`).
fn unknown_field(name: &str, shape: &Shape) -> String {
    let mut message = format!("unknown field `{name}`, ");
    match shape.fields {
        [] => message.push_str("there are no fields"),
        [only] => {
            let _ = write!(message, "expected `{}`", only.name);
        }
        [first, second] => {
            let _ = write!(message, "expected `{}` or `{}`", first.name, second.name);
        }
        all => {
            message.push_str("expected one of ");
            for (index, field) in all.iter().enumerate() {
                let comma = if index == 0 { "" } else { ", " };
                let _ = write!(message, "{comma}`{}`", field.name);
            }
        }
    }
    message
}

/// A struct from an array, as serde's derive also reads one: its fields in declaration order,
/// then serde_json wants the array to end.
fn check_items(items: &[Node], tail: Tail, path: &Path, shape: &Shape) -> Checked {
    let count = shape.fields.len();
    for (index, field) in shape.fields.iter().enumerate() {
        match items.get(index) {
            Some(value) => check(value, &Path::Index(path, index), &field.kind)?,
            None if tail != Tail::Closed => return Err(Stop::Syntax),
            None if field.absent == Absent::Default => {}
            None => {
                let plural = if count == 1 { "" } else { "s" };
                let expected = format!("{} with {count} element{plural}", shape.name);
                return path.fail(Message::invalid_length(index, &expected.as_str()));
            }
        }
    }
    match tail {
        Tail::Closed if items.len() <= count => Ok(()),
        Tail::BrokenAtEnd if items.len() <= count => Err(Stop::Syntax),
        _ => path.fail("trailing characters"),
    }
}

// Building the structs from a checked tree: every value has its kind, every required field is
// there. A field is `None` when absent (or when an array leaves it out).

/// The fields of a struct, in declaration order.
fn fields<'a, const N: usize>(node: Option<&'a Node>, shape: &Shape) -> [Option<&'a Node>; N] {
    std::array::from_fn(|index| field(node, shape, index))
}

// The builders are called from many places; inlined, each call would be a copy (issue 15).
#[inline(never)]
fn field<'a>(node: Option<&'a Node>, shape: &Shape, index: usize) -> Option<&'a Node> {
    match node {
        Some(Node::Object(members, _)) => {
            let name = shape.fields.get(index)?.name;
            members
                .iter()
                .find(|(member, _)| member == name)
                .map(|(_, value)| value)
        }
        Some(Node::Array(items, _)) => items.get(index),
        _ => None,
    }
}

type Build<T> = fn(Option<&Node>) -> T;

#[inline(never)]
fn text(node: Option<&Node>) -> String {
    match node {
        Some(Node::Str(v)) => v.clone(),
        _ => String::new(),
    }
}

fn flag(node: Option<&Node>) -> bool {
    matches!(node, Some(Node::Bool(true)))
}

#[inline(never)]
fn count(node: Option<&Node>) -> u64 {
    match node {
        Some(Node::U64(v)) => *v,
        _ => 0,
    }
}

#[inline(never)]
fn port(node: Option<&Node>) -> u16 {
    match node {
        Some(Node::U64(v)) => u16::try_from(*v).unwrap_or(0),
        _ => 0,
    }
}

#[inline(never)]
fn fraction(node: Option<&Node>) -> f64 {
    match node {
        Some(Node::U64(v)) => *v as f64,
        Some(Node::I64(v)) => *v as f64,
        Some(Node::F64(v)) => *v,
        _ => 0.0,
    }
}

#[inline(never)]
fn config_duration(node: Option<&Node>) -> ConfigDuration {
    let text = match node {
        Some(Node::Str(v)) => v.as_str(),
        _ => "",
    };
    ConfigDuration(parse_duration(text).unwrap_or(Duration::ZERO))
}

/// As serde_json's `Value` reads it: a name given twice keeps its last value.
#[inline(never)]
fn value(node: Option<&Node>) -> Value {
    match node {
        Some(Node::Bool(v)) => Value::Bool(*v),
        Some(Node::U64(v)) => Value::Number((*v).into()),
        Some(Node::I64(v)) => Value::Number((*v).into()),
        Some(Node::F64(v)) => Number::from_f64(*v).map_or(Value::Null, Value::Number),
        Some(Node::Str(v)) => Value::String(v.clone()),
        Some(Node::Array(items, _)) => Value::Array(items.iter().map(|v| value(Some(v))).collect()),
        Some(Node::Object(members, _)) => {
            let mut map = Map::new();
            for (name, member) in members {
                map.insert(name.clone(), value(Some(member)));
            }
            Value::Object(map)
        }
        Some(Node::Null | Node::Broken) | None => Value::Null,
    }
}

/// `Option<T>`: absent or `null` is `None`.
#[inline(never)]
fn option<T>(node: Option<&Node>, build: Build<T>) -> Option<T> {
    match node {
        None | Some(Node::Null) => None,
        some => Some(build(some)),
    }
}

#[inline(never)]
fn list<T>(node: Option<&Node>, build: Build<T>) -> Vec<T> {
    match node {
        Some(Node::Array(items, _)) => items.iter().map(|item| build(Some(item))).collect(),
        _ => Vec::new(),
    }
}

/// A name given twice keeps its last value, as serde's `BTreeMap` does.
#[inline(never)]
fn map<T>(node: Option<&Node>, build: Build<T>) -> BTreeMap<String, T> {
    let mut map = BTreeMap::new();
    if let Some(Node::Object(members, _)) = node {
        for (name, member) in members {
            map.insert(name.clone(), build(Some(member)));
        }
    }
    map
}

#[inline(never)]
fn texts(node: Option<&Node>) -> Vec<String> {
    list(node, text)
}

#[inline(never)]
fn some_texts(node: Option<&Node>) -> Option<Vec<String>> {
    option(node, texts)
}

#[inline(never)]
fn port_list(node: Option<&Node>) -> Vec<u16> {
    list(node, port)
}

#[inline(never)]
fn some_text(node: Option<&Node>) -> Option<String> {
    option(node, text)
}

#[inline(never)]
fn some_duration(node: Option<&Node>) -> Option<ConfigDuration> {
    option(node, config_duration)
}

fn build_config(node: Option<&Node>) -> RawConfig {
    let [providers, rate_limits, rules, unmatched, access_log, bypass_cors_preflight, direct_peer_header] =
        fields(node, &CONFIG);
    RawConfig {
        providers: map(providers, build_provider),
        rate_limits: map(rate_limits, build_rate_limit),
        rules: list(rules, build_rule),
        unmatched: some_text(unmatched),
        access_log: option(access_log, build_access_log),
        bypass_cors_preflight: flag(bypass_cors_preflight),
        direct_peer_header: some_text(direct_peer_header),
    }
}

fn build_provider(node: Option<&Node>) -> RawProvider {
    let [issuer, audiences, remote_jwks, local_jwks, from_headers, from_params, from_cookies, forward, forward_payload_header, claim_to_headers, clock_skew, algorithms, require_expiration, space_delimited_claims] =
        fields(node, &PROVIDER);
    RawProvider {
        issuer: text(issuer),
        audiences: texts(audiences),
        remote_jwks: option(remote_jwks, build_remote_jwks),
        local_jwks: option(local_jwks, build_local_jwks),
        from_headers: option(from_headers, |v| list(v, build_header_location)),
        from_params: some_texts(from_params),
        from_cookies: some_texts(from_cookies),
        forward: flag(forward),
        forward_payload_header: some_text(forward_payload_header),
        claim_to_headers: list(claim_to_headers, build_claim_to_header),
        clock_skew: some_duration(clock_skew),
        algorithms: some_texts(algorithms),
        require_expiration: flag(require_expiration),
        space_delimited_claims: texts(space_delimited_claims),
    }
}

fn build_remote_jwks(node: Option<&Node>) -> RawRemoteJwks {
    let [cluster, uri, timeout, cache_duration] = fields(node, &REMOTE_JWKS);
    RawRemoteJwks {
        cluster: text(cluster),
        uri: text(uri),
        timeout: some_duration(timeout),
        cache_duration: some_duration(cache_duration),
    }
}

fn build_local_jwks(node: Option<&Node>) -> RawLocalJwks {
    let [inline] = fields(node, &LOCAL_JWKS);
    RawLocalJwks {
        inline: text(inline),
    }
}

fn build_header_location(node: Option<&Node>) -> RawHeaderLocation {
    let [name, value_prefix] = fields(node, &HEADER_LOCATION);
    RawHeaderLocation {
        name: text(name),
        value_prefix: text(value_prefix),
    }
}

fn build_claim_to_header(node: Option<&Node>) -> RawClaimToHeader {
    let [claim_name, header_name] = fields(node, &CLAIM_TO_HEADER);
    RawClaimToHeader {
        claim_name: text(claim_name),
        header_name: text(header_name),
    }
}

fn build_rate_limit(node: Option<&Node>) -> RawRateLimit {
    let [key, token_bucket, mode, max_delay, shadow, service, enable_ratelimit_headers] =
        fields(node, &RATE_LIMIT);
    RawRateLimit {
        key: value(key),
        token_bucket: option(token_bucket, build_token_bucket),
        mode: some_text(mode),
        max_delay: some_duration(max_delay),
        shadow: flag(shadow),
        service: option(service, build_rate_limit_service),
        enable_ratelimit_headers: flag(enable_ratelimit_headers),
    }
}

fn build_token_bucket(node: Option<&Node>) -> RawTokenBucket {
    let [max_tokens, tokens_per_fill, fill_interval] = fields(node, &TOKEN_BUCKET);
    RawTokenBucket {
        max_tokens: count(max_tokens),
        tokens_per_fill: count(tokens_per_fill),
        fill_interval: config_duration(fill_interval),
    }
}

fn build_rate_limit_service(node: Option<&Node>) -> RawRateLimitService {
    let [cluster, domain, timeout, failure_mode_deny] = fields(node, &RATE_LIMIT_SERVICE);
    RawRateLimitService {
        cluster: text(cluster),
        domain: text(domain),
        timeout: some_duration(timeout),
        failure_mode_deny: flag(failure_mode_deny),
    }
}

fn build_rule(node: Option<&Node>) -> RawRule {
    let [name, action, matcher, when, dry_run, requires, allow_missing, allow_unauthenticated, rate_limits] =
        fields(node, &RULE);
    RawRule {
        name: text(name),
        action: some_text(action),
        matcher: build_match(matcher),
        when: option(when, |v| list(v, value)),
        dry_run: flag(dry_run),
        requires: option(requires, value),
        allow_missing: flag(allow_missing),
        allow_unauthenticated: flag(allow_unauthenticated),
        rate_limits: texts(rate_limits),
    }
}

fn build_match(node: Option<&Node>) -> RawMatch {
    let [path, prefix, paths, not_paths, methods, not_methods, hosts, not_hosts, ports, not_ports, headers] =
        fields(node, &MATCH);
    RawMatch {
        path: some_text(path),
        prefix: some_text(prefix),
        paths: some_texts(paths),
        not_paths: some_texts(not_paths),
        methods: some_texts(methods),
        not_methods: some_texts(not_methods),
        hosts: some_texts(hosts),
        not_hosts: some_texts(not_hosts),
        ports: option(ports, port_list),
        not_ports: option(not_ports, port_list),
        headers: option(headers, |v| map(v, text)),
    }
}

fn build_access_log(node: Option<&Node>) -> RawAccessLog {
    let [enabled, filter_state, byte_counts, sample_rate, request_headers] =
        fields(node, &ACCESS_LOG);
    RawAccessLog {
        enabled: option(enabled, flag),
        filter_state: option(filter_state, flag),
        byte_counts: option(byte_counts, flag),
        sample_rate: option(sample_rate, fraction),
        request_headers: texts(request_headers),
    }
}

/// How the configuration was read before: serde's derive over serde_json, the path found from
/// the error's position. The reference the tests hold [`raw_config`] to.
#[cfg(test)]
pub(super) fn with_serde(json: &[u8]) -> Result<RawConfig, ConfigError> {
    use serde::Deserialize;

    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ConfigError::new(
            "",
            "the configuration must be a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let raw = RawConfig::deserialize(&mut deserializer).map_err(|err| {
        ConfigError::new(
            json_path::path_of(json, &err),
            without_position(&err.to_string()),
        )
    })?;
    deserializer
        .end()
        .map_err(|err| ConfigError::new("", without_position(&err.to_string())))?;
    Ok(raw)
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Both readers on `json`: the same structs, or the same path and message.
    pub(in crate::config) fn reads_as_serde_did(json: &[u8]) -> Result<RawConfig, ConfigError> {
        let read = raw_config(json);
        let before = with_serde(json);
        assert_eq!(
            format!("{read:?}"),
            format!("{before:?}"),
            "{}",
            String::from_utf8_lossy(json)
        );
        read
    }

    fn error(json: &str) -> String {
        match reads_as_serde_did(json.as_bytes()) {
            Ok(raw) => panic!("{json} read as {raw:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_or_not_json_are_refused_as_serde_did() {
        let documents: [&[u8]; 9] = [
            b"{\"unmatched\": \"\xff\"}",
            b"{\"rules\": [{\"name\": \"a\xc3\"}]}",
            b"{\"unma\xfftched\": 1}",
            b"{\"unmatched\": \"allow\"}\xff",
            b"{\xff}",
            b"{\"unmatched\": \"\\ud800\"}",
            b"{\"unmatched\": \"\0\"}",
            b"{\"rules\": [{\"name\": \"a\", \"match\": {\"headers\": {\"x\": \"\xed\xa0\x80\"}}}]}",
            b"\xef\xbb\xbf{}",
        ];
        for json in documents {
            assert!(
                reads_as_serde_did(json).is_err(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn a_field_given_twice_is_refused_where_serde_refused_it() {
        assert_eq!(
            error(r#"{"rules": [{"name": "a", "dry_run": true, "name": "b"}]}"#),
            "rules[0]: duplicate field `name`"
        );
        // The second `null` counts: the field was given.
        assert_eq!(
            error(r#"{"direct_peer_header": null, "direct_peer_header": null}"#),
            "duplicate field `direct_peer_header`"
        );
        // What comes first in the text is named first.
        assert_eq!(
            error(r#"{"unmatched": "a", "rules": 1, "unmatched": "b"}"#),
            "rules: invalid type: integer `1`, expected a sequence"
        );
        assert_eq!(
            error(r#"{"unmatched": "a", "unmatched": "b", "rules": 1}"#),
            "duplicate field `unmatched`"
        );
    }

    #[test]
    fn a_map_key_given_twice_keeps_its_last_value() {
        let raw = reads_as_serde_did(
            br#"{"rules": [{"name": "a", "match": {"headers": {"x": "1", "y": "2", "x": "3"}}}]}"#,
        )
        .unwrap();
        let headers = raw.rules[0].matcher.headers.clone().unwrap();
        assert_eq!(headers["x"], "3");
        // serde_json's `Value` does the same inside `requires`, `key` and `when`.
        let raw = reads_as_serde_did(
            br#"{"rules": [{"name": "a", "requires": {"any": ["p"], "any": ["q"]}}]}"#,
        )
        .unwrap();
        assert_eq!(raw.rules[0].requires, Some(json!({"any": ["q"]})));
        // But an error in the first value still counts.
        assert_eq!(
            error(r#"{"providers": {"p": {"issuer": 1}, "p": {"issuer": "i"}}}"#),
            "providers.p.issuer: invalid type: integer `1`, expected a string"
        );
    }

    #[test]
    fn null_for_a_defaulted_field_is_refused_but_null_for_an_option_is_none() {
        assert_eq!(
            error(r#"{"bypass_cors_preflight": null}"#),
            "bypass_cors_preflight: invalid type: null, expected a boolean"
        );
        assert_eq!(
            error(r#"{"rules": [{"name": "a", "match": null}]}"#),
            "rules[0].match: invalid type: null, expected struct RawMatch"
        );
        assert_eq!(
            error(r#"{"rules": null}"#),
            "rules: invalid type: null, expected a sequence"
        );
        let raw = reads_as_serde_did(
            br#"{"unmatched": null, "access_log": {"enabled": null, "sample_rate": null},
                 "rules": [{"name": "a", "requires": null, "when": null}]}"#,
        )
        .unwrap();
        assert_eq!(raw.unmatched, None);
        assert_eq!(raw.rules[0].requires, None);
        assert_eq!(raw.rules[0].when, None);
        // `key` is a `Value`, not an `Option`: null is a value (that validate.rs refuses).
        let raw = reads_as_serde_did(br#"{"rate_limits": {"a": {"key": null}}}"#).unwrap();
        assert_eq!(raw.rate_limits["a"].key, Value::Null);
    }

    #[test]
    fn numbers_out_of_range_and_floats_for_integers_are_refused_as_serde_did() {
        let ports = |ports: &str| {
            error(&format!(
                r#"{{"rules": [{{"name": "a", "match": {{"ports": {ports}}}}}]}}"#
            ))
        };
        assert_eq!(
            ports("[65536]"),
            "rules[0].match.ports[0]: invalid value: integer `65536`, expected u16"
        );
        assert_eq!(
            ports("[80, -1]"),
            "rules[0].match.ports[1]: invalid value: integer `-1`, expected u16"
        );
        assert_eq!(
            ports("[80.0]"),
            "rules[0].match.ports[0]: invalid type: floating point `80.0`, expected u16"
        );
        assert_eq!(
            ports("[1e3]"),
            "rules[0].match.ports[0]: invalid type: floating point `1000.0`, expected u16"
        );
        let bucket = |max: &str| {
            error(&format!(
                r#"{{"rate_limits": {{"a": {{"key": "rule", "token_bucket": {{"max_tokens": {max}}}}}}}}}"#
            ))
        };
        assert_eq!(
            bucket("18446744073709551616"),
            "rate_limits.a.token_bucket.max_tokens: invalid type: floating point `1.8446744073709552e+19`, expected u64"
        );
        assert_eq!(
            bucket("-9223372036854775809"),
            "rate_limits.a.token_bucket.max_tokens: invalid type: floating point `-9.223372036854776e+18`, expected u64"
        );
        assert_eq!(
            bucket("-0"),
            "rate_limits.a.token_bucket.max_tokens: invalid type: floating point `-0.0`, expected u64"
        );
        assert_eq!(
            bucket("18446744073709551615"),
            "rate_limits.a.token_bucket: missing field `tokens_per_fill`"
        );
        let raw = reads_as_serde_did(br#"{"access_log": {"sample_rate": 1}}"#).unwrap();
        assert_eq!(raw.access_log.unwrap().sample_rate, Some(1.0));
    }

    #[test]
    fn unknown_fields_are_named_at_any_depth() {
        assert_eq!(
            error(
                r#"{"providers": {"p": {"issuer": "i", "local_jwks": {"inline": "{}", "x": 1}}}}"#
            ),
            "providers.p.local_jwks.x: unknown field `x`, expected `inline`"
        );
        assert_eq!(
            error(r#"{"providers": {"p": {"from_headers": [{"name": "a", "value": "b"}]}}}"#),
            "providers.p.from_headers[0].value: unknown field `value`, expected `name` or `value_prefix`"
        );
        assert_eq!(
            error(r#"{"rate_limits": {"a": {"key": "rule", "service": {"cluster": "c", "domian": "d"}}}}"#),
            "rate_limits.a.service.domian: unknown field `domian`, expected one of `cluster`, `domain`, `timeout`, `failure_mode_deny`"
        );
        // Before the fields it lacks, after the values before it.
        assert_eq!(
            error(r#"{"rules": [{"zz": 1}]}"#),
            "rules[0].zz: unknown field `zz`, expected one of `name`, `action`, `match`, `when`, `dry_run`, `requires`, `allow_missing`, `allow_unauthenticated`, `rate_limits`"
        );
        assert_eq!(
            error(r#"{"rules": [{"dry_run": 1, "zz": 1}]}"#),
            "rules[0].dry_run: invalid type: integer `1`, expected a boolean"
        );
    }

    #[test]
    fn the_fields_a_struct_lacks_are_named_in_declaration_order() {
        assert_eq!(
            error(
                r#"{"rate_limits": {"a": {"key": "rule", "token_bucket": {"fill_interval": "1s"}}}}"#
            ),
            "rate_limits.a.token_bucket: missing field `max_tokens`"
        );
        assert_eq!(
            error(r#"{"rate_limits": {"a": {"token_bucket": {"fill_interval": "1s"}}}}"#),
            "rate_limits.a.token_bucket: missing field `max_tokens`"
        );
        assert_eq!(
            error(r#"{"rate_limits": {"a": {"token_bucket": null}}}"#),
            "rate_limits.a: missing field `key`"
        );
    }

    #[test]
    fn durations_say_what_parse_duration_says() {
        assert_eq!(
            error(r#"{"providers": {"p": {"issuer": "i", "clock_skew": "1 sec"}}}"#),
            r#"providers.p.clock_skew: invalid duration "1 sec" (use a whole number and ms, s, m or h, like "250ms" or "10s")"#
        );
        assert_eq!(
            error(r#"{"providers": {"p": {"issuer": "i", "clock_skew": 60}}}"#),
            r#"providers.p.clock_skew: invalid type: integer `60`, expected a duration string like "250ms", "10s", "5m" or "1h""#
        );
    }

    /// serde's derive reads a struct from an array too, field by field; nobody writes that, but
    /// it was accepted and still is.
    #[test]
    fn structs_read_from_arrays_as_serde_did() {
        let raw = reads_as_serde_did(
            br#"{"rate_limits": {"a": ["rule", [1, 2, "1s"], null, null, false, null]}}"#,
        )
        .unwrap();
        let policy = &raw.rate_limits["a"];
        assert_eq!(policy.token_bucket.as_ref().unwrap().tokens_per_fill, 2);
        assert_eq!(
            error(r#"{"rate_limits": {"a": ["rule", null]}}"#),
            "rate_limits.a: invalid length 3, expected struct RawRateLimit with 7 elements"
        );
        for (text, message) in [
            (r#"{"providers": {"p": {"issuer": "i", "local_jwks": []}}}"#, "providers.p.local_jwks: invalid length 0, expected struct RawLocalJwks with 1 element"),
            (r#"{"providers": {"p": {"issuer": "i", "local_jwks": ["{}", 1]}}}"#, "providers.p.local_jwks: trailing characters"),
            (r#"{"providers": {"p": {"issuer": "i", "local_jwks": ["{}" 1]}}}"#, "providers.p.local_jwks: trailing characters"),
            (r#"{"providers": {"p": {"issuer": "i", "local_jwks": ["{}",]}}}"#, "providers.p.local_jwks: trailing comma"),
            (r#"{"providers": {"p": {"issuer": "i", "local_jwks": ["{}","#, "providers.p.local_jwks: trailing characters"),
            (r#"{"providers": {"p": {"issuer": "i", "local_jwks": ["{}""#, "providers.p.local_jwks: EOF while parsing a list"),
            (r#"{"providers": {"p": {"issuer": "i", "from_headers": [["authorization"]]}}}"#, "providers.p: missing field `issuer`"),
        ] {
            if message.contains("missing") {
                // A struct from an array may leave out only its defaulted fields.
                assert!(reads_as_serde_did(text.as_bytes()).is_ok(), "{text}");
                continue;
            }
            assert_eq!(error(text), message, "{text}");
        }
    }

    #[test]
    fn a_syntax_error_comes_after_what_is_wrong_before_it() {
        assert_eq!(
            error(r#"{"rules": [{"name": 1, "#),
            "rules[0].name: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            error(r#"{"rules": [{"name": "a", "#),
            "rules[0].?: EOF while parsing a value"
        );
        // A wrong container is refused at its first byte, whatever is inside.
        assert_eq!(
            error(r#"{"unmatched": [1, 2"#),
            "unmatched: invalid type: sequence, expected a string"
        );
        assert_eq!(error(r#"{"unmatched": "deny"} x"#), "trailing characters");
        assert_eq!(
            error(r#"{"unmatched": 1} x"#),
            "unmatched: invalid type: integer `1`, expected a string"
        );
    }

    /// The configurations the repository ships: Envoy's demo and the Istio examples.
    #[cfg(feature = "cli")]
    #[test]
    fn the_repositorys_configs_read_as_serde_read_them() {
        use serde::Deserialize;

        fn collect(yaml: &serde_yaml_ng::Value, found: &mut Vec<String>) {
            match yaml {
                serde_yaml_ng::Value::Mapping(map) => {
                    for (key, value) in map {
                        match key.as_str() {
                            Some("pluginConfig") => {
                                found.push(serde_json::to_string(value).unwrap())
                            }
                            Some("value") if value.as_str().is_some_and(|v| v.contains("{")) => {
                                found.push(value.as_str().unwrap().to_owned())
                            }
                            _ => collect(value, found),
                        }
                    }
                }
                serde_yaml_ng::Value::Sequence(items) => {
                    items.iter().for_each(|item| collect(item, found))
                }
                _ => {}
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("envoy/envoy.yaml")];
        for entry in std::fs::read_dir(root.join("istio")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
        let mut found = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                collect(
                    &serde_yaml_ng::Value::deserialize(document).unwrap(),
                    &mut found,
                );
            }
        }
        assert!(found.len() >= 6, "{found:?}");
        for config in found {
            let raw = reads_as_serde_did(config.as_bytes());
            assert!(raw.is_ok(), "{config}: {raw:?}");
        }
    }

    /// A document shaped like a configuration, with the mistakes people make: wrong kinds,
    /// unknown and repeated fields, nulls, numbers at the edges, arrays for structs, and text
    /// cut off anywhere.
    fn document(seed: u64) -> String {
        struct Dice(u64);
        impl Dice {
            fn roll(&mut self, sides: u64) -> u64 {
                // splitmix64
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) % sides
            }
            fn one<'a>(&mut self, of: &[&'a str]) -> &'a str {
                of[self.roll(of.len() as u64) as usize]
            }
        }
        fn scalar(dice: &mut Dice) -> String {
            dice.one(&[
                "null",
                "true",
                "false",
                "0",
                "1",
                "-1",
                "1.5",
                "-0",
                "65535",
                "65536",
                "1e3",
                "18446744073709551615",
                "18446744073709551616",
                "\"\"",
                "\"s\"",
                "\"1s\"",
                "\"250ms\"",
                "\"1 sec\"",
                "\"client_ip\"",
                "[]",
                "{}",
                "[\"a\", 1]",
                "{\"zz\": 1}",
            ])
            .to_owned()
        }
        fn value(dice: &mut Dice, kind: &Kind, depth: u32) -> String {
            if dice.roll(20) == 0 || depth > 6 {
                return scalar(dice);
            }
            match kind {
                Kind::Text => dice.one(&["\"a\"", "\"x-user\"", "\"\\u0041\""]).to_owned(),
                Kind::Flag => dice.one(&["true", "false"]).to_owned(),
                Kind::Count | Kind::Port => dice.one(&["0", "20", "443", "65535"]).to_owned(),
                Kind::Fraction => dice.one(&["0.5", "1", "0"]).to_owned(),
                Kind::Duration => dice.one(&["\"1s\"", "\"250ms\"", "\"0s\""]).to_owned(),
                Kind::Any => dice
                    .one(&[
                        "\"corp\"",
                        "[\"claim:sub\"]",
                        "{\"any\": [\"a\", {\"all\": []}], \"any\": 1}",
                        "{\"key\": \"request.path\", \"values\": [1.5, null]}",
                    ])
                    .to_owned(),
                Kind::Option(inner) => value(dice, inner, depth),
                Kind::List(item) => {
                    let items: Vec<String> = (0..dice.roll(3))
                        .map(|_| value(dice, item, depth + 1))
                        .collect();
                    format!("[{}]", items.join(", "))
                }
                Kind::Map(item) => {
                    let members: Vec<String> = (0..dice.roll(3))
                        .map(|_| {
                            let name = dice.one(&["a", "b", "corp"]);
                            format!("\"{name}\": {}", value(dice, item, depth + 1))
                        })
                        .collect();
                    format!("{{{}}}", members.join(", "))
                }
                Kind::Struct(shape) if dice.roll(10) == 0 => {
                    let items: Vec<String> = shape
                        .fields
                        .iter()
                        .take(dice.roll(shape.fields.len() as u64 + 2) as usize)
                        .map(|field| value(dice, &field.kind, depth + 1))
                        .collect();
                    format!("[{}]", items.join(", "))
                }
                Kind::Struct(shape) => {
                    let mut members = Vec::new();
                    for field in shape.fields {
                        if dice.roll(10) < 4 && field.absent != Absent::Missing {
                            continue;
                        }
                        let member = format!(
                            "\"{}\": {}",
                            field.name,
                            value(dice, &field.kind, depth + 1)
                        );
                        if dice.roll(40) == 0 {
                            members.push(member.clone());
                        }
                        members.push(member);
                    }
                    if dice.roll(20) == 0 {
                        members.push("\"zz\": 1".to_owned());
                    }
                    // Shuffled a little: the order of members decides which error comes first.
                    for at in 1..members.len() {
                        if dice.roll(4) == 0 {
                            members.swap(at - 1, at);
                        }
                    }
                    format!("{{{}}}", members.join(", "))
                }
            }
        }
        let mut dice = Dice(seed);
        let mut text = value(&mut dice, &Kind::Struct(&CONFIG), 0);
        if !text.starts_with('{') {
            text = "{}".to_owned();
        }
        if dice.roll(4) == 0 {
            let mut at = dice.roll(text.len() as u64) as usize;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn random_configurations_read_as_serde_read_them(seed in any::<u64>()) {
            reads_as_serde_did(document(seed).as_bytes()).ok();
        }
    }
}
