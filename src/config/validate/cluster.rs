//! `[cluster]` and each pool's `nodes`.

use super::*;
use crate::config::raw::RawNodes;

impl Validator<'_> {
    /// `[cluster]`; a pool naming `nodes` without it is an error
    /// (`pools` already read).
    pub(super) fn cluster(&mut self, raw: &RawConfig, pools: &[PoolConfig]) -> ClusterConfig {
        let mut out = ClusterConfig::default();
        let Some(c) = &raw.cluster else {
            for (name, p) in &raw.pool {
                if let Some(n) = &p.get_ref().nodes {
                    self.err(
                        Some(n.span()),
                        format!("pool.{name}.nodes"),
                        "needs a [cluster] table with api and bundle",
                    );
                }
            }
            return out;
        };
        let c = c.get_ref();
        if let Some(list) = &c.api {
            for (i, a) in list.get_ref().iter().enumerate() {
                match parse_host_port(a.get_ref()) {
                    Ok(hp) => out.api.push(hp),
                    Err(m) => self.err(Some(a.span()), format!("cluster.api[{i}]"), m),
                }
            }
            if list.get_ref().is_empty() {
                self.err(Some(list.span()), "cluster.api", "expected at least one \"host:port\"");
            }
        }
        if let Some(b) = &c.bundle {
            if b.get_ref().is_empty() {
                self.err(Some(b.span()), "cluster.bundle", "expected a directory");
            }
            out.bundle = Some(std::path::PathBuf::from(b.get_ref()));
            out.bundle_pos = self.lines.pos(b.span().start);
        } else if c.api.is_some() {
            self.err(
                None,
                "cluster.bundle",
                "missing key: the API is read with a client bundle's ca.pem, cert.pem and key.pem",
            );
        }
        if let Some(d) = self.duration(c.refresh.as_ref(), "cluster.refresh".into(), false).flatten() {
            out.refresh = d;
        }
        if c.api.is_none() {
            for (name, p) in &raw.pool {
                if let Some(n) = &p.get_ref().nodes {
                    self.err(Some(n.span()), format!("pool.{name}.nodes"), "needs [cluster] api");
                }
            }
        } else if pools.iter().all(|p| p.nodes.is_none()) {
            self.warn(None, "cluster", "no pool has nodes: the cluster is read for nothing");
        }
        out
    }

    /// A pool's `nodes`.
    pub(super) fn nodes(&mut self, n: &S<RawNodes>, key: &str) -> Option<NodeSelector> {
        let r = n.get_ref();
        let by = match (&r.role, &r.label) {
            (Some(role), None) => match role.get_ref().as_str() {
                "manager" => NodeMatch::Role(Role::Manager),
                "worker" => NodeMatch::Role(Role::Worker),
                other => {
                    let m = format!("expected \"manager\" or \"worker\", found \"{other}\"");
                    self.err(Some(role.span()), format!("{key}.role"), m);
                    return None;
                }
            },
            (None, Some(label)) => {
                let text = label.get_ref();
                let (k, v) = match text.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_owned())),
                    None => (text.as_str(), None),
                };
                if k.is_empty() || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    let m = format!("expected \"key=value\" or \"key\", found \"{text}\"");
                    self.err(Some(label.span()), format!("{key}.label"), m);
                    return None;
                }
                NodeMatch::Label(k.to_owned(), v)
            }
            _ => {
                self.err(Some(n.span()), key, r#"expected one of role or label: { role = "manager", port = 443 }"#);
                return None;
            }
        };
        let Some(p) = &r.port else {
            self.err(Some(n.span()), format!("{key}.port"), "missing key: the port clients are sent to on each node");
            return None;
        };
        let port = self.int(p, &format!("{key}.port"), 1, 65535, "")?;
        Some(NodeSelector { by, port: port as u16 })
    }
}
