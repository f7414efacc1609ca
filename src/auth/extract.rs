//! Finding a provider's token in a request (headers, query parameters, cookies) and removing
//! it before the request goes upstream.

use crate::config::TokenLocations;
use crate::request::Request;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header(String),
    Param(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    Missing,
    /// One token, and every place it was found (to strip them all).
    Found {
        token: String,
        locations: Vec<Location>,
    },
    /// Different tokens in the provider's locations: refused, never guessed between.
    Conflicting,
}

/// Looks in every configured location. Envoy's defaults are `Authorization: Bearer` and
/// `?access_token=`. The prefix is matched case-insensitively (auth schemes are, RFC 9110 §11.1).
pub fn extract(locations: &TokenLocations, request: &Request) -> Extracted {
    let mut token: Option<String> = None;
    let mut found = Vec::new();
    let mut conflicting = false;
    let mut note = |candidate: &str, location: Location| {
        let candidate = candidate.trim();
        if candidate.is_empty() {
            return;
        }
        match &token {
            Some(existing) if existing != candidate => conflicting = true,
            Some(_) => {}
            None => token = Some(candidate.to_owned()),
        }
        if !found.contains(&location) {
            found.push(location);
        }
    };
    for header in &locations.headers {
        // Envoy joins repeated headers with ','; a JWT never contains one.
        for value in request
            .header_values(&header.name)
            .flat_map(|v| v.split(','))
        {
            if let Some(rest) = strip_prefix_ignore_case(value.trim_start(), &header.value_prefix) {
                note(rest, Location::Header(header.name.clone()));
            }
        }
    }
    if !locations.params.is_empty() {
        for (name, value) in query_pairs(request.query()) {
            if locations.params.contains(&name) {
                note(&value, Location::Param(name));
            }
        }
    }
    if !locations.cookies.is_empty() {
        for value in request.header_values("cookie") {
            for (name, cookie) in cookie_pairs(value) {
                if locations.cookies.iter().any(|c| c == name) {
                    note(cookie, Location::Cookie(name.to_owned()));
                }
            }
        }
    }
    match (conflicting, token) {
        (true, _) => Extracted::Conflicting,
        (false, Some(token)) => Extracted::Found {
            token,
            locations: found,
        },
        (false, None) => Extracted::Missing,
    }
}

fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

/// `name=value` pairs of a query string, percent-decoded (`+` is a space, as in forms).
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (byte, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                index += 1;
            }
            (other, None) => {
                out.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `name=value` pairs of one `Cookie` header (RFC 6265 §4.2.1), values unquoted.
pub fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name.trim(), value))
    })
}

/// The request path with the named query parameters removed (for tokens sent as parameters).
pub fn path_without_params(path: &str, params: &[String]) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !params.iter().any(|p| *p == percent_decode(name))
        })
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The `Cookie` header value with the named cookies removed; `None` when nothing is left.
pub fn cookie_header_without(values: &[&str], names: &[String]) -> Option<String> {
    let kept: Vec<String> = values
        .iter()
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            !names.iter().any(|n| n == name)
        })
        .map(str::to_owned)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderLocation;

    fn locations() -> TokenLocations {
        TokenLocations {
            headers: vec![
                HeaderLocation {
                    name: "authorization".into(),
                    value_prefix: "Bearer ".into(),
                },
                HeaderLocation {
                    name: "x-jwt".into(),
                    value_prefix: String::new(),
                },
            ],
            params: vec!["access_token".into()],
            cookies: vec!["session".into()],
        }
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request<'static> {
        Request::get(path, headers)
    }

    #[test]
    fn finds_a_bearer_token_with_any_case_of_scheme() {
        for header in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER  abc.def.ghi ",
        ] {
            let found = extract(&locations(), &request("/", &[("authorization", header)]));
            assert_eq!(
                found,
                Extracted::Found {
                    token: "abc.def.ghi".into(),
                    locations: vec![Location::Header("authorization".into())]
                }
            );
        }
    }

    #[test]
    fn other_schemes_are_not_bearer_tokens() {
        let found = extract(
            &locations(),
            &request("/", &[("authorization", "Basic dXNlcjpwYXNz")]),
        );
        assert_eq!(found, Extracted::Missing);
    }

    #[test]
    fn finds_tokens_in_params_and_cookies() {
        let found = extract(&locations(), &request("/x?a=1&access_token=t.o.k&b=2", &[]));
        assert!(matches!(found, Extracted::Found { ref token, .. } if token == "t.o.k"));
        let found = extract(
            &locations(),
            &request("/", &[("cookie", "theme=dark; session=\"c.o.k\"")]),
        );
        assert_eq!(
            found,
            Extracted::Found {
                token: "c.o.k".into(),
                locations: vec![Location::Cookie("session".into())]
            }
        );
    }

    #[test]
    fn the_same_token_twice_is_one_token_found_in_two_places() {
        let found = extract(
            &locations(),
            &request("/?access_token=a.b.c", &[("authorization", "Bearer a.b.c")]),
        );
        assert!(matches!(found, Extracted::Found { ref locations, .. } if locations.len() == 2));
    }

    #[test]
    fn two_different_tokens_conflict() {
        let found = extract(
            &locations(),
            &request(
                "/",
                &[
                    ("authorization", "Bearer a.b.c"),
                    ("authorization", "Bearer d.e.f"),
                ],
            ),
        );
        assert_eq!(found, Extracted::Conflicting);
        let found = extract(
            &locations(),
            &request("/?access_token=x.y.z", &[("x-jwt", "a.b.c")]),
        );
        assert_eq!(found, Extracted::Conflicting);
    }

    #[test]
    fn empty_values_are_missing_tokens() {
        let found = extract(
            &locations(),
            &request("/?access_token=", &[("authorization", "Bearer ")]),
        );
        assert_eq!(found, Extracted::Missing);
    }

    #[test]
    fn removes_token_params_and_cookies() {
        assert_eq!(
            path_without_params("/a?x=1&access_token=t&y=2", &["access_token".into()]),
            "/a?x=1&y=2"
        );
        assert_eq!(
            path_without_params("/a?access_token=t", &["access_token".into()]),
            "/a"
        );
        assert_eq!(
            path_without_params("/a?access%5Ftoken=t", &["access_token".into()]),
            "/a"
        );
        assert_eq!(
            cookie_header_without(&["a=1; session=t", "b=2"], &["session".into()]),
            Some("a=1; b=2".into())
        );
        assert_eq!(
            cookie_header_without(&["session=t"], &["session".into()]),
            None
        );
    }

    #[test]
    fn percent_decoding_is_lenient_about_bad_escapes() {
        assert_eq!(percent_decode("a%2Eb+c%zz%"), "a.b c%zz%");
    }
}
