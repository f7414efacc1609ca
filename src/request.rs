//! The facts about one request that the cores decide on, gathered by the host adapter.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::authz::peer::PeerIdentity;

/// Header names are lower-case (Envoy delivers them so); `headers` holds only those the
/// configuration reads (`config::RequestReads`). Text is borrowed where it can be (from the
/// header map Envoy handed over, names from the configuration), so gathering a request copies
/// no value; `into_owned` makes a request that outlives them (one that waits for keys).
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: Cow<'a, str>,
    /// `:path` as received, query included.
    pub path: Cow<'a, str>,
    pub authority: Cow<'a, str>,
    pub headers: HeaderList<'a>,
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
    /// Which headers meshguard writes the client sent, when the host has seen them all.
    pub written_sent: WrittenSent,
}

/// What the host knows of the headers meshguard writes (`Config::output_headers`) on a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WrittenSent {
    /// Not known (no whole header map was read): each is removed, or replaced where it is set.
    #[default]
    Unknown,
    /// The host read the whole header map: the client sent exactly these (as configured). One
    /// it did not send needs no removal, and one meshguard sets is added (Envoy's add is about
    /// half the cost of its replace, which first looks for and drops every copy).
    Known(Vec<String>),
}

impl WrittenSent {
    /// Whether `name` (one meshguard writes) may be on the request.
    pub fn may_have(&self, name: &str) -> bool {
        match self {
            WrittenSent::Unknown => true,
            WrittenSent::Known(sent) => sent.iter().any(|sent| sent == name),
        }
    }
}

/// A header's name and value.
pub type Header<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The headers of a request that the configuration reads, in the order sent. The first is kept
/// inline: it is usually the only one (the token's header), so a request allocates no list.
#[derive(Debug, Clone, Default)]
pub struct HeaderList<'a> {
    first: Option<Header<'a>>,
    rest: Vec<Header<'a>>,
}

impl<'a> HeaderList<'a> {
    pub fn push(&mut self, header: Header<'a>) {
        match self.first {
            None => self.first = Some(header),
            Some(_) => self.rest.push(header),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header<'a>> {
        self.first.iter().chain(&self.rest)
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn into_owned(self) -> HeaderList<'static> {
        let owned = |(name, value): Header| -> Header<'static> {
            (
                Cow::Owned(name.into_owned()),
                Cow::Owned(value.into_owned()),
            )
        };
        HeaderList {
            first: self.first.map(owned),
            rest: self.rest.into_iter().map(owned).collect(),
        }
    }
}

impl<'a> FromIterator<Header<'a>> for HeaderList<'a> {
    fn from_iter<I: IntoIterator<Item = Header<'a>>>(headers: I) -> Self {
        let mut list = HeaderList::default();
        for header in headers {
            list.push(header);
        }
        list
    }
}

impl<'a> From<Vec<Header<'a>>> for HeaderList<'a> {
    fn from(headers: Vec<Header<'a>>) -> Self {
        headers.into_iter().collect()
    }
}

/// A value Envoy holds as bytes, as text: bytes that are not UTF-8 become U+FFFD, so such a
/// token is malformed and such a header equals no configured value. A rate-limit key built
/// from it shares its bucket with other such values: never a fresh one.
/// Borrowed when the bytes are UTF-8 (the usual case), owned only when a byte was replaced.
pub fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    // Valid text is checked a word at a time; `from_utf8_lossy` walks byte by byte (about 8x
    // slower in V8), and every byte of a bearer token goes through here.
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// `text_of` for bytes that may be owned already: owned bytes become owned text in place.
pub fn text_of_cow(bytes: Cow<'_, [u8]>) -> Cow<'_, str> {
    match bytes {
        Cow::Borrowed(bytes) => text_of(bytes),
        Cow::Owned(bytes) => Cow::Owned(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        }),
    }
}

impl<'a> Request<'a> {
    pub fn new(
        method: impl Into<Cow<'a, str>>,
        path: impl Into<Cow<'a, str>>,
        authority: impl Into<Cow<'a, str>>,
        headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    ) -> Request<'a> {
        Request {
            method: method.into(),
            path: path.into(),
            authority: authority.into(),
            headers: headers.into(),
            client_ip: None,
            remote_ip: None,
            direct_ip: None,
            port: None,
            peer: None,
            underscore_twins: Vec::new(),
            written_sent: WrittenSent::Unknown,
        }
    }

    /// A request that owns all its text, to keep beyond what it borrowed.
    pub fn into_owned(self) -> Request<'static> {
        Request {
            method: Cow::Owned(self.method.into_owned()),
            path: Cow::Owned(self.path.into_owned()),
            authority: Cow::Owned(self.authority.into_owned()),
            headers: self.headers.into_owned(),
            client_ip: self.client_ip,
            remote_ip: self.remote_ip,
            direct_ip: self.direct_ip,
            port: self.port,
            peer: self.peer,
            underscore_twins: self.underscore_twins,
            written_sent: self.written_sent,
        }
    }

    /// A GET request with these headers, for tests.
    #[cfg(test)]
    pub fn get(path: &str, headers: &[(&str, &str)]) -> Request<'static> {
        let headers = headers
            .iter()
            .map(|(n, v)| (Cow::Owned(n.to_string()), Cow::Owned(v.to_string())))
            .collect();
        Request::new("GET", path.to_owned(), "svc", headers)
    }

    /// The path without its query: what rules match on.
    pub fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path.as_ref(), |(path, _)| path)
    }

    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, query)| query)
    }

    pub fn header_values<'r, 'n>(
        &'r self,
        name: &'n str,
    ) -> impl Iterator<Item = &'r str> + use<'r, 'n, 'a> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
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
    fn header_list_keeps_the_order_sent() {
        let mut list = HeaderList::default();
        assert!(list.is_empty());
        for value in ["1", "2", "3"] {
            list.push(("x-a".into(), value.into()));
        }
        let values: Vec<&str> = list.iter().map(|(_, v)| v.as_ref()).collect();
        assert_eq!(values, ["1", "2", "3"]);
        assert_eq!(list.len(), 3);
        let owned = list.clone().into_owned();
        assert_eq!(owned.iter().count(), 3);
    }

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
