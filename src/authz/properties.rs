//! Property tests over random condition trees, rules and requests: a dry run never refuses and
//! never makes enforcement stricter, deny rules refuse whatever their order, a client gains
//! nothing by repeating a header, and `not_values` is "present and not `values`".

use std::rc::Rc;

use proptest::prelude::*;
use serde_json::{json, Map};

use super::pattern::{IpBlock, PathPattern, TextPattern};
use super::peer::PeerIdentity;
use super::*;
use crate::auth::cache::VerifiedToken;
use crate::config::RuleMatch;
use crate::request::Request;

const WORDS: [&str; 4] = ["admin", "ops", "dev", ""];

fn text_values() -> impl Strategy<Value = Vec<TextPattern>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(&WORDS[..3]).prop_map(|w| TextPattern::Exact(w.to_owned())),
            Just(TextPattern::Prefix("o".into())),
            Just(TextPattern::Suffix("v".into())),
            Just(TextPattern::Present),
        ],
        1..3,
    )
}

fn key_and_values() -> impl Strategy<Value = (Key, Values)> {
    prop_oneof![
        text_values().prop_map(|v| (Key::Header("x-t".into()), Values::Text(v))),
        text_values().prop_map(|v| (Key::Claim(vec!["groups".into()]), Values::Text(v))),
        text_values().prop_map(|v| (Key::SourceNamespace, Values::Text(v))),
        prop::sample::select(vec!["10.0.0.0/8", "10.1.0.0/16", "192.168.0.1"]).prop_map(|b| {
            (
                Key::RemoteIp,
                Values::Ip(vec![IpBlock::parse(b).unwrap_or_else(|e| panic!("{e}"))]),
            )
        }),
        prop::sample::select(vec!["/a/{*}", "/a/*", "/b", "/{**}"]).prop_map(|p| {
            (
                Key::Path,
                Values::Path(vec![PathPattern::parse(p).unwrap_or_else(|e| panic!("{e}"))]),
            )
        }),
    ]
}

fn leaf() -> impl Strategy<Value = Test> {
    (key_and_values(), any::<u8>()).prop_map(|((key, values), shape)| {
        let (values, not_values) = match shape % 3 {
            0 => (Some(values), None),
            1 => (None, Some(values)),
            _ => (Some(values.clone()), Some(values)),
        };
        Test::Attribute {
            key,
            values,
            not_values,
        }
    })
}

fn condition() -> impl Strategy<Value = Condition> {
    let leaf = (leaf(), any::<bool>()).prop_map(|(test, dry_run)| wrap(test, dry_run));
    leaf.prop_recursive(3, 16, 3, |inner| {
        (
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(Test::All),
                prop::collection::vec(inner.clone(), 1..3).prop_map(Test::Any),
                inner.prop_map(|c| Test::Not(Box::new(c))),
            ],
            any::<bool>(),
        )
            .prop_map(|(test, dry_run)| wrap(test, dry_run))
    })
}

fn wrap(test: Test, dry_run: bool) -> Condition {
    Condition {
        test,
        dry_run,
        label: String::new(),
        reads_token: false,
    }
}

fn without_dry_runs(condition: &Condition) -> Condition {
    let test = match &condition.test {
        Test::All(children) => Test::All(children.iter().map(without_dry_runs).collect()),
        Test::Any(children) => Test::Any(children.iter().map(without_dry_runs).collect()),
        Test::Not(child) => Test::Not(Box::new(without_dry_runs(child))),
        other => other.clone(),
    };
    wrap(test, false)
}

fn all_dry_run(condition: &Condition) -> Condition {
    wrap(without_dry_runs(condition).test, true)
}

#[derive(Debug, Clone)]
struct Scene {
    path: &'static str,
    tenant: Vec<&'static str>,
    groups: Option<Vec<&'static str>>,
    namespace: Option<&'static str>,
    remote_ip: Option<&'static str>,
}

fn scene() -> impl Strategy<Value = Scene> {
    (
        prop::sample::select(vec!["/a/x", "/a/x/y", "/b", "/", "/c"]),
        prop::collection::vec(prop::sample::select(WORDS.to_vec()), 0..3),
        prop::option::of(prop::collection::vec(
            prop::sample::select(WORDS.to_vec()),
            0..3,
        )),
        prop::option::of(prop::sample::select(WORDS.to_vec())),
        prop::option::of(prop::sample::select(vec![
            "10.1.2.3",
            "10.2.0.1",
            "192.168.0.1",
            "8.8.8.8",
        ])),
    )
        .prop_map(|(path, tenant, groups, namespace, remote_ip)| Scene {
            path,
            tenant,
            groups,
            namespace,
            remote_ip,
        })
}

impl Scene {
    fn request(&self) -> Request<'static> {
        let headers = self
            .tenant
            .iter()
            .map(|t| ("x-t".into(), (*t).to_owned().into()))
            .collect();
        let mut request = Request::new("GET", self.path, "svc", headers);
        request.peer = self.namespace.and_then(|ns| {
            PeerIdentity::from_uri_san(&format!("spiffe://cluster.local/ns/{ns}/sa/api"))
        });
        request.remote_ip = self.remote_ip.and_then(|ip| ip.parse().ok());
        request
    }

    fn tokens(&self) -> Vec<Rc<VerifiedToken>> {
        self.groups
            .iter()
            .map(|groups| {
                let mut claims = Map::new();
                claims.insert("groups".into(), json!(groups));
                Rc::new(VerifiedToken {
                    provider: 0,
                    subject: None,
                    principal: None,
                    claims,
                    upstream_headers: Vec::new(),
                })
            })
            .collect()
    }
}

fn deny_rule(name: &str, when: Vec<Condition>, dry_run: bool) -> PolicyRule {
    PolicyRule {
        name: name.to_owned(),
        matcher: RuleMatch::default(),
        when,
        dry_run,
    }
}

/// Whether authorization refuses the scene.
fn refuses(scene: &Scene, deny: Vec<PolicyRule>, allow: &[Condition], allow_dry_run: bool) -> bool {
    let request = scene.request();
    let tokens = scene.tokens();
    let facts = Facts {
        request: &request,
        tokens: &tokens,
        providers: &[],
    };
    let authz = Authorization {
        deny,
        ..Authorization::default()
    };
    let side = AllowSide {
        rule: "allow",
        when: allow,
        dry_run: allow_dry_run,
    };
    judge(&authz, Some(side), &facts, &|_| true).refuses()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_dry_run_never_refuses(
        scene in scene(),
        deny in prop::collection::vec(condition(), 0..3),
        allow in prop::collection::vec(condition(), 0..3),
    ) {
        let deny_rules = deny.iter().map(|c| deny_rule("d", vec![all_dry_run(c)], false)).collect();
        let allow_dry: Vec<Condition> = allow.iter().map(all_dry_run).collect();
        prop_assert!(!refuses(&scene, deny_rules, &allow_dry, false));
        let deny_rules = deny.iter().map(|c| deny_rule("d", vec![without_dry_runs(c)], true)).collect();
        prop_assert!(!refuses(&scene, deny_rules, &allow, true));
    }

    #[test]
    fn marking_conditions_as_dry_runs_never_makes_enforcement_stricter(
        scene in scene(),
        deny in prop::collection::vec(condition(), 0..3),
        allow in prop::collection::vec(condition(), 0..3),
    ) {
        let plain_deny = deny.iter().map(|c| deny_rule("d", vec![without_dry_runs(c)], false)).collect();
        let plain_allow: Vec<Condition> = allow.iter().map(without_dry_runs).collect();
        let marked_deny = deny.iter().map(|c| deny_rule("d", vec![c.clone()], false)).collect();
        if !refuses(&scene, plain_deny, &plain_allow, false) {
            prop_assert!(!refuses(&scene, marked_deny, &allow, false));
        }
    }

    #[test]
    fn deny_rules_refuse_whatever_their_order(
        scene in scene(),
        deny in prop::collection::vec(condition(), 1..4),
        allow in prop::collection::vec(condition(), 0..2),
        rotation in 0usize..4,
    ) {
        let rules: Vec<PolicyRule> = deny
            .iter()
            .enumerate()
            .map(|(i, c)| deny_rule(&format!("d{i}"), vec![without_dry_runs(c)], false))
            .collect();
        let mut rotated = rules.clone();
        let by = rotation % rotated.len().max(1);
        rotated.rotate_left(by);
        prop_assert_eq!(
            refuses(&scene, rules, &allow, false),
            refuses(&scene, rotated, &allow, false)
        );
    }

    #[test]
    fn repeating_a_header_never_turns_a_refusal_into_a_pass(
        scene in scene(),
        deny in prop::collection::vec(condition(), 0..3),
        allow in prop::collection::vec(condition(), 0..3),
        extra in prop::sample::select(WORDS.to_vec()),
    ) {
        // A first line can make an absent header present; a repeated one must change nothing
        // in the client's favour.
        prop_assume!(!scene.tenant.is_empty());
        let deny_rules = || -> Vec<PolicyRule> {
            deny.iter().map(|c| deny_rule("d", vec![without_dry_runs(c)], false)).collect()
        };
        let plain_allow: Vec<Condition> = allow.iter().map(without_dry_runs).collect();
        let mut repeated = scene.clone();
        repeated.tenant.push(extra);
        if refuses(&scene, deny_rules(), &plain_allow, false) {
            prop_assert!(refuses(&repeated, deny_rules(), &plain_allow, false));
        }
    }

    #[test]
    fn not_values_is_present_and_not_values(scene in scene(), (key, values) in key_and_values()) {
        // Lines of a repeated header are judged one by one (see the property above).
        prop_assume!(!matches!(key, Key::Header(_)) || scene.tenant.len() <= 1);
        let request = scene.request();
        let tokens = scene.tokens();
        let facts = Facts { request: &request, tokens: &tokens, providers: &[] };
        let holds_with = |values: Option<Values>, not_values: Option<Values>| {
            let condition = wrap(Test::Attribute { key: key.clone(), values, not_values }, false);
            holds(&condition, &facts, Reading { enforced: true, pass: false })
        };
        let present = holds_with(None, Some(Values::Ip(Vec::new())));
        let present = present || holds_with(Some(Values::Text(vec![TextPattern::Prefix(String::new())])), None);
        prop_assert_eq!(
            holds_with(None, Some(values.clone())),
            present && !holds_with(Some(values), None)
        );
    }
}
