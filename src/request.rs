//! The facts about one request that the cores decide on, gathered by the host adapter.

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
        assert_eq!(Request::new("GET", "/", "", vec![]).query(), None);
    }
}
