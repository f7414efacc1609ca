//! The value forms a condition compares with: Istio's string forms (exact, `prefix*`, `*suffix`,
//! `*` for "present"), Envoy's URI templates for paths (`{*}`, `{**}`), and CIDR blocks.

use std::net::IpAddr;

/// Istio's string forms. Case is kept; host patterns are lower-cased when built and compared
/// with a lower-cased authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value (istiod compiles it to the regex `.+`).
    Present,
}

impl TextPattern {
    /// `*` is presence; a leading `*` a suffix; a trailing `*` a prefix; anything else exact
    /// (Istio's `matcher.StringMatcher`, checked first for `*` so a prefix is never empty).
    pub fn parse(text: &str) -> TextPattern {
        if text == "*" {
            TextPattern::Present
        } else if let Some(suffix) = text.strip_prefix('*') {
            TextPattern::Suffix(suffix.to_owned())
        } else if let Some(prefix) = text.strip_suffix('*') {
            TextPattern::Prefix(prefix.to_owned())
        } else {
            TextPattern::Exact(text.to_owned())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            TextPattern::Exact(exact) => value == exact,
            TextPattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            TextPattern::Suffix(suffix) => value.ends_with(suffix.as_str()),
            TextPattern::Present => !value.is_empty(),
        }
    }
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: whatever is left, slashes included, possibly nothing (last only).
    Rest,
}

/// A path value: a string form, or a template (when it holds `{*}` or `{**}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Text(TextPattern),
    Template(Vec<Segment>),
}

/// The characters a template's `{*}` and `{**}` match: RFC 3986 `pchar` less `*` and `=`, the
/// set Envoy's `uri_template` matcher accepts (`uri_template_internal.cc`, `kLiteral`).
fn is_template_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&byte)
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.contains("{*}") && !text.contains("{**}") {
            return Ok(PathPattern::Text(TextPattern::parse(text)));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("template {text:?} must start with /"));
        };
        let mut segments = Vec::new();
        let mut parts = rest.split('/').peekable();
        while let Some(part) = parts.next() {
            let segment = match part {
                "{*}" => Segment::One,
                "{**}" if parts.peek().is_none() => Segment::Rest,
                "{**}" => return Err(format!("{text:?}: {{**}} must be the last segment")),
                literal
                    if literal.contains('{') || literal.contains('}') || literal.contains('*') =>
                {
                    return Err(format!(
                        "{text:?}: {{*}} and {{**}} must each be a whole path segment"
                    ))
                }
                literal if !literal.bytes().all(is_template_char) => {
                    return Err(format!(
                        "{text:?}: segment {literal:?} has a character a path template cannot match"
                    ))
                }
                literal => Segment::Literal(literal.to_owned()),
            };
            segments.push(segment);
        }
        Ok(PathPattern::Template(segments))
    }

    /// `path` is the path without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Text(text) => text.matches(path),
            PathPattern::Template(segments) => path
                .strip_prefix('/')
                .is_some_and(|rest| template_matches(segments, rest)),
        }
    }
}

fn template_matches(segments: &[Segment], path: &str) -> bool {
    let mut rest = path;
    let mut segments = segments.iter().peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            Segment::Rest => return rest.bytes().all(|b| b == b'/' || is_template_char(b)),
            Segment::One | Segment::Literal(_) => {
                let (head, tail) = match rest.split_once('/') {
                    Some((head, tail)) if !last => (head, Some(tail)),
                    Some(_) => return false,
                    None => (rest, None),
                };
                let ok = match segment {
                    Segment::Literal(literal) => head == literal,
                    _ => !head.is_empty() && head.bytes().all(is_template_char),
                };
                match (ok, tail, last) {
                    (false, _, _) => return false,
                    (true, None, true) => return true,
                    (true, None, false) => return false,
                    (true, Some(tail), _) => rest = tail,
                }
            }
        }
    }
    false
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix_len: u8,
}

impl IpBlock {
    pub fn parse(text: &str) -> Result<IpBlock, String> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(IpBlock {
            network,
            prefix_len,
        })
    }

    /// An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a dual-stack listener reports) is
    /// compared as the IPv4 address it carries.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let (network, address, bits) = match (self.network, address) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(a)), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        // A /0 block shifts by the whole width, which `>>` refuses for u128: it holds all.
        let shift = bits - u32::from(self.prefix_len);
        shift >= 128 || (network >> shift) == (address >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_forms() {
        assert!(TextPattern::parse("*").matches("x"));
        assert!(!TextPattern::parse("*").matches(""));
        assert!(TextPattern::parse("/api/*").matches("/api/"));
        assert!(TextPattern::parse("/api/*").matches("/api/x/y"));
        assert!(!TextPattern::parse("/api/*").matches("/api"));
        assert!(TextPattern::parse("*.html").matches("/a/b.html"));
        assert!(!TextPattern::parse("*.html").matches("/a/b.htm"));
        assert!(TextPattern::parse("/a").matches("/a"));
        assert!(!TextPattern::parse("/a").matches("/A"));
    }

    #[test]
    fn one_segment_template_needs_exactly_one_segment() {
        let pattern = PathPattern::parse("/orders/{*}/items").unwrap();
        assert!(pattern.matches("/orders/42/items"));
        assert!(!pattern.matches("/orders//items"));
        assert!(!pattern.matches("/orders/4/2/items"));
        assert!(!pattern.matches("/orders/42/items/"));
        assert!(!pattern.matches("/orders/42"));
        assert!(
            !pattern.matches("/orders/a=b/items"),
            "= is outside Envoy's template set"
        );
    }

    #[test]
    fn rest_template_matches_anything_below_including_nothing() {
        let pattern = PathPattern::parse("/files/{**}").unwrap();
        assert!(pattern.matches("/files/"));
        assert!(pattern.matches("/files/a"));
        assert!(pattern.matches("/files/a/b/c/"));
        assert!(!pattern.matches("/files"));
        assert!(!pattern.matches("/filesx/a"));
        let pattern = PathPattern::parse("/{*}/{**}").unwrap();
        assert!(pattern.matches("/a/b/c"));
        assert!(!pattern.matches("/a"));
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(PathPattern::parse("/a/{**}/b").is_err());
        assert!(PathPattern::parse("/a/x{*}").is_err());
        assert!(PathPattern::parse("a/{*}").is_err());
        assert!(PathPattern::parse("/a b/{*}").is_err());
    }

    #[test]
    fn cidr_blocks_for_both_families() {
        let block = IpBlock::parse("10.0.0.0/8").unwrap();
        assert!(block.contains("10.255.1.2".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        assert!(!block.contains("::1".parse().unwrap()));
        let any = IpBlock::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("1.2.3.4".parse().unwrap()));
        let v6 = IpBlock::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!(IpBlock::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        let one = IpBlock::parse("192.168.1.7").unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
        assert!(IpBlock::parse("10.0.0").is_err());
    }
}
