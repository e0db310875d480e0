//! The v2 keys API on the wire: answers, error codes, requests, directory listings.

use crate::dcs::{DcsError, DcsResult, RawNode, keys};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

/// etcd v2 error codes we act on.
pub(super) const KEY_NOT_FOUND: i64 = 100;
pub(super) const COMPARE_FAILED: i64 = 101;
pub(super) const NODE_EXISTS: i64 = 105;
pub(super) const EVENT_INDEX_CLEARED: i64 = 401;

#[derive(Debug, Deserialize, Default)]
pub(super) struct V2Node {
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: Option<String>,
    #[serde(default)]
    pub(super) dir: bool,
    #[serde(default)]
    pub(super) nodes: Vec<V2Node>,
    #[serde(default)]
    pub(super) ttl: Option<i64>,
    #[serde(rename = "modifiedIndex", default)]
    pub(super) modified_index: i64,
    #[serde(rename = "createdIndex", default)]
    pub(super) created_index: i64,
}

/// A v2 answer: either an action with nodes or an error object.
#[derive(Debug, Deserialize, Default)]
pub(super) struct V2Body {
    #[serde(default)]
    pub(super) action: Option<String>,
    #[serde(default)]
    pub(super) node: Option<V2Node>,
    #[serde(rename = "prevNode", default)]
    pub(super) prev_node: Option<V2Node>,
    #[serde(rename = "errorCode", default)]
    pub(super) error_code: Option<i64>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) cause: Option<String>,
}

#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    /// `X-Etcd-Index`: the store's index when the answer was made.
    pub(super) etcd_index: Option<i64>,
    pub(super) body: V2Body,
}

impl Reply {
    pub(super) fn ok(&self) -> bool {
        self.status.is_success()
    }
    pub(super) fn code(&self) -> Option<i64> {
        self.body.error_code
    }
    /// Success, a lost comparison (`false`), or an error the caller cannot act on.
    pub(super) fn cas(self, what: &str) -> DcsResult<bool> {
        match self.code() {
            _ if self.ok() => Ok(true),
            Some(KEY_NOT_FOUND | COMPARE_FAILED | NODE_EXISTS) => Ok(false),
            _ => Err(self.rejected(what)),
        }
    }
    pub(super) fn rejected(&self, what: &str) -> DcsError {
        DcsError::Rejected(format!(
            "{what}: etcd answered {} {} ({})",
            self.status,
            self.body.message.as_deref().unwrap_or(""),
            self.body.cause.as_deref().unwrap_or("")
        ))
    }
}

/// One request: the key relative to the cluster prefix, query and form parameters.
pub(super) struct Req<'a> {
    pub(super) method: Method,
    pub(super) rel: &'a str,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) form: Vec<(&'static str, String)>,
}

impl<'a> Req<'a> {
    pub(super) fn new(method: Method, rel: &'a str) -> Self {
        Req {
            method,
            rel,
            query: Vec::new(),
            form: Vec::new(),
        }
    }
    pub(super) fn q(mut self, k: &'static str, v: impl ToString) -> Self {
        self.query.push((k, v.to_string()));
        self
    }
    pub(super) fn f(mut self, k: &'static str, v: impl ToString) -> Self {
        self.form.push((k, v.to_string()));
        self
    }
}

/// Flatten a recursive directory listing into keys relative to `prefix`.
pub(super) fn flatten(node: V2Node, prefix: &str, out: &mut Vec<RawNode>) {
    if node.dir {
        for child in node.nodes {
            flatten(child, prefix, out);
        }
        return;
    }
    let Some(rel) = node.key.strip_prefix(prefix) else {
        return;
    };
    let version = if rel == keys::LEADER {
        node.created_index
    } else {
        node.modified_index
    };
    out.push(RawNode {
        key: rel.to_string(),
        value: node.value.unwrap_or_default(),
        version,
        session: node.ttl,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_flattened_with_upstream_versions() {
        let json = r#"{"action":"get","node":{"key":"/service/b","dir":true,"nodes":[
            {"key":"/service/b/leader","value":"pg0","ttl":10,"modifiedIndex":9,"createdIndex":4},
            {"key":"/service/b/config","value":"{}","modifiedIndex":3,"createdIndex":3},
            {"key":"/service/b/members","dir":true,"nodes":[
                {"key":"/service/b/members/pg0","value":"{}","ttl":7,"modifiedIndex":8,"createdIndex":5}]}]}}"#;
        let body: V2Body = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        flatten(body.node.unwrap(), "/service/b/", &mut out);
        let got: Vec<(&str, i64, Option<i64>)> = out
            .iter()
            .map(|n| (n.key.as_str(), n.version, n.session))
            .collect();
        assert_eq!(
            got,
            vec![
                ("leader", 4, Some(10)),
                ("config", 3, None),
                ("members/pg0", 8, Some(7))
            ]
        );
    }
}
