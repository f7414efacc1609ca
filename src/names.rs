//! The configuration's names as shared strings (`Rc<str>`), made once per configuration, so a
//! request's header changes and its verdict name rules, providers, policies and headers without
//! copying a string (issue 15: a request allocates as little as it can).

use std::rc::Rc;

use crate::config::Config;

/// The names a decision and its verdict hand on, by index as the configuration lists them.
#[derive(Debug, Default)]
pub struct Names {
    rules: Vec<Rc<str>>,
    providers: Vec<Rc<str>>,
    policies: Vec<Rc<str>>,
    /// `Config::output_headers`, in order.
    written: Vec<Rc<str>>,
    /// Every header meshguard writes or removes by a configured name: the output headers, each
    /// provider's token headers, and `cookie`.
    headers: Vec<Rc<str>>,
}

impl Names {
    pub fn of(config: &Config) -> Names {
        let mut headers: Vec<Rc<str>> = Vec::new();
        let written = config.output_headers.iter().map(String::as_str);
        let token_headers = config
            .providers
            .iter()
            .flat_map(|p| p.locations.headers.iter().map(|h| h.name.as_str()));
        for name in written.chain(token_headers).chain(["cookie"]) {
            if !headers.iter().any(|known| &**known == name) {
                headers.push(Rc::from(name));
            }
        }
        Names {
            rules: config
                .rules
                .iter()
                .map(|r| Rc::from(r.name.as_str()))
                .collect(),
            providers: config
                .providers
                .iter()
                .map(|p| Rc::from(p.name.as_str()))
                .collect(),
            policies: config
                .rate_limits
                .iter()
                .map(|p| Rc::from(p.name.as_str()))
                .collect(),
            written: config
                .output_headers
                .iter()
                .map(|name| Rc::from(name.as_str()))
                .collect(),
            headers,
        }
    }

    /// Every header meshguard writes upstream (`Config::output_headers`).
    pub fn written(&self) -> &[Rc<str>] {
        &self.written
    }

    pub fn rule(&self, index: usize) -> Option<Rc<str>> {
        self.rules.get(index).cloned()
    }

    pub fn provider(&self, index: usize) -> Option<Rc<str>> {
        self.providers.get(index).cloned()
    }

    pub fn policy(&self, index: usize) -> Option<Rc<str>> {
        self.policies.get(index).cloned()
    }

    /// A header name, shared when the configuration names it; another (an underscore twin a
    /// client sent) is made here.
    pub fn header(&self, name: &str) -> Rc<str> {
        self.headers
            .iter()
            .find(|known| &***known == name)
            .cloned()
            .unwrap_or_else(|| Rc::from(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkeys::{ec_jwk, jwks_json};
    use serde_json::json;

    #[test]
    fn configured_names_are_shared_and_others_made() {
        let keys = jwks_json(&[ec_jwk("ec1")]);
        let json = json!({
            "providers": {"corp": {"issuer": "i", "local_jwks": {"inline": keys},
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}},
            "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp"}]
        });
        let config = crate::config::parse(json.to_string().as_bytes());
        let Ok(config) = config else {
            panic!("the test's config is valid: {config:?}");
        };
        let names = Names::of(&config);
        assert!(Rc::ptr_eq(&names.header("x-user"), &names.header("x-user")));
        assert!(Rc::ptr_eq(
            &names.header("authorization"),
            &names.header("authorization")
        ));
        assert_eq!(&*names.header("x_user"), "x_user");
        assert_eq!(names.rule(0).as_deref(), Some("api"));
        assert_eq!(names.provider(0).as_deref(), Some("corp"));
        assert_eq!(names.rule(1), None);
    }
}
