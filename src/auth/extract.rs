//! Finding a provider's token in a request (headers, query parameters, cookies) and removing
//! it before the request goes upstream.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::config::TokenLocations;
use crate::request::Request;

/// Where a token was found: an index into the provider's `TokenLocations` list of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Header(usize),
    Param(usize),
    Cookie(usize),
}

/// Every place a token was found; one or two in practice, so kept inline.
pub type Locations = SmallVec<[Location; 2]>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted<'r> {
    Missing,
    /// One token, and every place it was found (to strip them all). The token is borrowed from
    /// the request unless it had to be percent-decoded.
    Found {
        token: Cow<'r, str>,
        locations: Locations,
    },
    /// Different tokens in the provider's locations: refused, never guessed between.
    Conflicting,
}

/// Looks in every configured location. Envoy's defaults are `Authorization: Bearer` and
/// `?access_token=`. The prefix is matched case-insensitively (auth schemes are, RFC 9110 §11.1).
pub fn extract<'r>(locations: &TokenLocations, request: &'r Request) -> Extracted<'r> {
    let mut token: Option<Cow<'r, str>> = None;
    let mut found = Locations::new();
    let mut conflicting = false;
    let mut note = |candidate: Cow<'r, str>, location: Location| {
        let candidate = trimmed(candidate);
        if candidate.is_empty() {
            return;
        }
        match &token {
            Some(existing) if *existing != candidate => conflicting = true,
            Some(_) => {}
            None => token = Some(candidate),
        }
        if !found.contains(&location) {
            found.push(location);
        }
    };
    for (index, header) in locations.headers.iter().enumerate() {
        // Envoy joins repeated headers with ','; a JWT never contains one.
        for value in request
            .header_values(&header.name)
            .flat_map(|v| v.split(','))
        {
            if let Some(rest) = strip_prefix_ignore_case(value.trim_start(), &header.value_prefix) {
                note(Cow::Borrowed(rest), Location::Header(index));
            }
        }
    }
    if !locations.params.is_empty() {
        // Names are compared as sent first: only a matching pair's value is decoded.
        for (raw_name, raw_value) in raw_query_pairs(request.query()) {
            if let Some(index) = locations
                .params
                .iter()
                .position(|param| param_name_is(raw_name, param))
            {
                note(decoded(raw_value), Location::Param(index));
            }
        }
    }
    if !locations.cookies.is_empty() {
        for value in request.header_values("cookie") {
            for (name, cookie) in cookie_pairs(value) {
                if let Some(index) = locations.cookies.iter().position(|c| c == name) {
                    note(Cow::Borrowed(cookie), Location::Cookie(index));
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

/// Without surrounding whitespace, still borrowed when it was.
fn trimmed(text: Cow<'_, str>) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
        Cow::Owned(text) if text.trim().len() == text.len() => Cow::Owned(text),
        Cow::Owned(text) => Cow::Owned(text.trim().to_owned()),
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

/// `name=value` pairs of a query string as sent (not decoded).
fn raw_query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// `name=value` pairs of a query string, percent-decoded (`+` is a space, as in forms).
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    raw_query_pairs(query).map(|(name, value)| (percent_decode(name), percent_decode(value)))
}

/// Text as `percent_decode` reads it, borrowed when there is nothing to decode.
fn decoded(raw: &str) -> Cow<'_, str> {
    if raw.contains(['%', '+']) {
        Cow::Owned(percent_decode(raw))
    } else {
        Cow::Borrowed(raw)
    }
}

/// Whether a parameter name as sent decodes to `name`, decoding only when it has escapes.
fn param_name_is(raw: &str, name: &str) -> bool {
    decoded(raw) == name
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
pub fn path_without_params(path: &str, params: &[impl AsRef<str>]) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !params.iter().any(|p| param_name_is(name, p.as_ref()))
        })
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The `Cookie` header value with the named cookies removed; `None` when nothing is left.
pub fn cookie_header_without(values: &[&str], names: &[impl AsRef<str>]) -> Option<String> {
    let kept: Vec<String> = values
        .iter()
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            !names.iter().any(|n| n.as_ref() == name)
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

    /// `extract`, with the token owned so the result outlives the request.
    fn find(locations: &TokenLocations, request: Request) -> Extracted<'static> {
        match extract(locations, &request) {
            Extracted::Found { token, locations } => Extracted::Found {
                token: Cow::Owned(token.into_owned()),
                locations,
            },
            Extracted::Missing => Extracted::Missing,
            Extracted::Conflicting => Extracted::Conflicting,
        }
    }

    #[test]
    fn finds_a_bearer_token_with_any_case_of_scheme() {
        for header in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER  abc.def.ghi ",
        ] {
            let found = find(&locations(), request("/", &[("authorization", header)]));
            assert_eq!(
                found,
                Extracted::Found {
                    token: "abc.def.ghi".into(),
                    locations: Locations::from_slice(&[Location::Header(0)])
                }
            );
        }
    }

    #[test]
    fn other_schemes_are_not_bearer_tokens() {
        let found = find(
            &locations(),
            request("/", &[("authorization", "Basic dXNlcjpwYXNz")]),
        );
        assert_eq!(found, Extracted::Missing);
    }

    #[test]
    fn finds_tokens_in_params_and_cookies() {
        let found = find(&locations(), request("/x?a=1&access_token=t.o.k&b=2", &[]));
        assert!(matches!(found, Extracted::Found { ref token, .. } if token == "t.o.k"));
        let found = find(
            &locations(),
            request("/", &[("cookie", "theme=dark; session=\"c.o.k\"")]),
        );
        assert_eq!(
            found,
            Extracted::Found {
                token: "c.o.k".into(),
                locations: Locations::from_slice(&[Location::Cookie(0)])
            }
        );
    }

    #[test]
    fn a_percent_encoded_parameter_name_and_token_are_decoded() {
        let found = find(&locations(), request("/x?access%5Ftoken=t%2Eo.k", &[]));
        assert_eq!(
            found,
            Extracted::Found {
                token: "t.o.k".into(),
                locations: Locations::from_slice(&[Location::Param(0)])
            }
        );
        let found = find(&locations(), request("/x?access_tokens=t.o.k", &[]));
        assert_eq!(found, Extracted::Missing);
    }

    #[test]
    fn the_same_token_twice_is_one_token_found_in_two_places() {
        let found = find(
            &locations(),
            request("/?access_token=a.b.c", &[("authorization", "Bearer a.b.c")]),
        );
        assert!(matches!(found, Extracted::Found { ref locations, .. } if locations.len() == 2));
    }

    #[test]
    fn two_different_tokens_conflict() {
        let found = find(
            &locations(),
            request(
                "/",
                &[
                    ("authorization", "Bearer a.b.c"),
                    ("authorization", "Bearer d.e.f"),
                ],
            ),
        );
        assert_eq!(found, Extracted::Conflicting);
        let found = find(
            &locations(),
            request("/?access_token=x.y.z", &[("x-jwt", "a.b.c")]),
        );
        assert_eq!(found, Extracted::Conflicting);
    }

    #[test]
    fn empty_values_are_missing_tokens() {
        let found = find(
            &locations(),
            request("/?access_token=", &[("authorization", "Bearer ")]),
        );
        assert_eq!(found, Extracted::Missing);
    }

    #[test]
    fn removes_token_params_and_cookies() {
        assert_eq!(
            path_without_params("/a?x=1&access_token=t&y=2", &["access_token"]),
            "/a?x=1&y=2"
        );
        assert_eq!(
            path_without_params("/a?access_token=t", &["access_token"]),
            "/a"
        );
        assert_eq!(
            path_without_params("/a?access%5Ftoken=t", &["access_token"]),
            "/a"
        );
        assert_eq!(
            cookie_header_without(&["a=1; session=t", "b=2"], &["session"]),
            Some("a=1; b=2".into())
        );
        assert_eq!(cookie_header_without(&["session=t"], &["session"]), None);
    }

    #[test]
    fn percent_decoding_is_lenient_about_bad_escapes() {
        assert_eq!(percent_decode("a%2Eb+c%zz%"), "a.b c%zz%");
    }
}
