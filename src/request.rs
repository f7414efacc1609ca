//! The facts about one request that the cores decide on, gathered by the host adapter.

/// Header names are lower-case (Envoy delivers them so); pseudo-headers are not in `headers`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// `:path` as received, query included.
    pub path: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
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
        }
    }

    /// Builds a request from Envoy's header map, pseudo-headers included.
    pub fn from_header_map(map: Vec<(String, String)>) -> Request {
        let mut request = Request::default();
        let mut headers = Vec::with_capacity(map.len());
        for (name, value) in map {
            match name.as_str() {
                ":method" => request.method = value,
                ":path" => request.path = value,
                ":authority" => request.authority = value,
                other if other.starts_with(':') => {}
                _ => headers.push((name, value)),
            }
        }
        request.headers = headers;
        request
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

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pseudo_headers_from_headers() {
        let request = Request::from_header_map(vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/api/x?token=1".into()),
            (":authority".into(), "svc".into()),
            (":scheme".into(), "http".into()),
            ("x-a".into(), "1".into()),
        ]);
        assert_eq!(request.method, "POST");
        assert_eq!(request.path_only(), "/api/x");
        assert_eq!(request.query(), Some("token=1"));
        assert_eq!(request.header("x-a"), Some("1"));
        assert_eq!(request.headers.len(), 1);
    }
}
