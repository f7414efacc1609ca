//! The facts about one request that the cores decide on, gathered by the host adapter.

use std::net::IpAddr;

use crate::authz::peer::PeerIdentity;

/// Header names are lower-case (Envoy delivers them so); `headers` holds only those the
/// configuration reads (`config::RequestReads`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// `:path` as received, query included.
    pub path: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
    /// The downstream address Envoy reports (no port), when a rate-limit key needs it.
    pub client_ip: Option<String>,
    /// The client address Envoy derived (from `X-Forwarded-For` under its trusted hops), when a
    /// `remote.ip` condition needs it.
    pub remote_ip: Option<IpAddr>,
    /// The direct peer's address, when a `source.ip` condition needs it.
    pub direct_ip: Option<IpAddr>,
    /// The port the connection arrived on, when a rule needs it.
    pub port: Option<u16>,
    /// The mesh identity of an mTLS peer, when a rule needs it.
    pub peer: Option<PeerIdentity>,
    /// Headers on the request whose names are a header meshguard writes with `_` for `-`
    /// (`x_user` for `x-user`): removed like the header itself, since CGI, WSGI and many
    /// frameworks read both names as one.
    pub underscore_twins: Vec<String>,
}

/// A value Envoy holds as bytes, as text: bytes that are not UTF-8 become U+FFFD, so such a
/// token is malformed and such a header equals no configured value. A rate-limit key built
/// from it shares its bucket with other such values: never a fresh one.
pub fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Request {
    pub fn new(
        method: &str,
        path: &str,
        authority: &str,
        headers: Vec<(String, String)>,
    ) -> Request {
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: authority.to_owned(),
            headers,
            client_ip: None,
            remote_ip: None,
            direct_ip: None,
            port: None,
            peer: None,
            underscore_twins: Vec::new(),
        }
    }

    /// A GET request with these headers, for tests.
    #[cfg(test)]
    pub fn get(path: &str, headers: &[(&str, &str)]) -> Request {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Request::new("GET", path, "svc", headers)
    }

    /// The path without its query: what rules match on.
    pub fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path.as_str(), |(path, _)| path)
    }

    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, query)| query)
    }

    pub fn header_values<'r, 'n>(
        &'r self,
        name: &'n str,
    ) -> impl Iterator<Item = &'r str> + use<'r, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A header's values joined by `,` in the order sent, as Envoy's route matching and
    /// `%REQ()%` see a repeated header: one value to compare, so a client cannot add a friendlier
    /// copy (`x-tenant: acme` + `x-tenant: public` is `acme,public`, not `public`).
    pub fn header_combined(&self, name: &str) -> Option<String> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        let mut combined = first.to_owned();
        for value in values {
            combined.push(',');
            combined.push_str(value);
        }
        Some(combined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_are_split_at_the_first_question_mark() {
        let request = Request::new(
            "POST",
            "/api/x?token=1?2",
            "svc",
            vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
        );
        assert_eq!(request.path_only(), "/api/x");
        assert_eq!(request.query(), Some("token=1?2"));
        assert_eq!(
            request.header_values("x-a").collect::<Vec<_>>(),
            vec!["1", "2"]
        );
        assert_eq!(request.header_combined("x-a").as_deref(), Some("1,2"));
        assert_eq!(request.header_combined("x-b"), None);
        assert_eq!(Request::new("GET", "/", "", vec![]).query(), None);
    }
}
