//! The configuration's JSON as a tree, read once by serde_json through one visitor (serde's derived
//! visitors, one per struct with a field matcher and a sequence form, were ~66 KB of the .wasm).
//!
//! Objects keep their members in order and with duplicates, so `read.rs` can refuse a field
//! given twice and report the first error in document order, as serde's streaming did. Where the
//! document stops being JSON, the tree keeps what was read up to there: the containers still
//! open end in [`Tail::Broken`], the value being read is [`Node::Broken`], and the error goes
//! with the tree; `read.rs` reports it only if nothing before it is wrong.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    /// serde_json reads a number without a fraction or exponent as u64 when it is not negative
    /// and fits, as i64 when it is negative and fits, and as f64 otherwise.
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Array(Vec<Node>, Tail),
    Object(Vec<(String, Node)>, Tail),
    /// The value at which the document stopped being JSON.
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail {
    Closed,
    /// The document stopped being JSON in or after the last item.
    Broken,
    /// An array's text stopped where its `]` could have been: the document ends right after the
    /// last item, or a comma stands before the `]`. serde_json says the same there whether it
    /// expected another item or the end (a struct read from an array expects the end).
    BrokenAtEnd,
}

/// A document read as far as it is JSON.
pub(super) struct Tree {
    pub root: Node,
    /// Why reading stopped: in the tree (which then holds a broken part) or after it.
    pub error: Option<serde_json::Error>,
}

pub(super) fn parse(json: &[u8]) -> Tree {
    let partial = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    match NodeSeed(&partial).deserialize(&mut deserializer) {
        Ok(root) => Tree {
            root,
            error: deserializer.end().err(),
        },
        Err(error) => Tree {
            root: partial.take().unwrap_or(Node::Broken),
            error: Some(error),
        },
    }
}

/// Reads one value; on failure, leaves what it read of it in `.0` for the container above.
struct NodeSeed<'a>(&'a RefCell<Option<Node>>);

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        let read = deserializer.deserialize_any(NodeVisitor(self.0));
        if read.is_err() && self.0.borrow().is_none() {
            *self.0.borrow_mut() = Some(Node::Broken);
        }
        read
    }
}

struct NodeVisitor<'a>(&'a RefCell<Option<Node>>);

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::U64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::I64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::F64(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(NodeSeed(self.0)) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Node::Array(items, Tail::Closed)),
                Err(error) => {
                    let tail = match self.0.take() {
                        Some(item) => {
                            items.push(item);
                            Tail::Broken
                        }
                        // The separator after the last item was wrong.
                        None => {
                            let message = error.to_string();
                            if message.starts_with("EOF while parsing a list")
                                || message.starts_with("trailing comma")
                            {
                                Tail::BrokenAtEnd
                            } else {
                                Tail::Broken
                            }
                        }
                    };
                    *self.0.borrow_mut() = Some(Node::Array(items, tail));
                    return Err(error);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        loop {
            let name = match map.next_key::<String>() {
                Ok(Some(name)) => name,
                Ok(None) => return Ok(Node::Object(members, Tail::Closed)),
                Err(error) => {
                    *self.0.borrow_mut() = Some(Node::Object(members, Tail::Broken));
                    return Err(error);
                }
            };
            match map.next_value_seed(NodeSeed(self.0)) {
                Ok(value) => members.push((name, value)),
                Err(error) => {
                    // A name without its colon has no value either.
                    let value = self.0.take().unwrap_or(Node::Broken);
                    members.push((name, value));
                    *self.0.borrow_mut() = Some(Node::Object(members, Tail::Broken));
                    return Err(error);
                }
            }
        }
    }
}
