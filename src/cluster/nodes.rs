//! The Engine API's node list (`GET /nodes`), read strictly: the fields a
//! pool needs must be there and make sense, or the whole answer is refused
//! (the last good list stays in force). One exception: a node whose
//! address cannot be found (a down worker reporting 0.0.0.0, no
//! Status.Addr) is left out of the list and named, so that one bad node
//! does not freeze every other change. Pure: bytes in, nodes out.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Role;

/// One node as a pool sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// Description.Hostname, else Spec.Name, else the ID: the server's
    /// name on the page and in events.
    pub name: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub state: NodeState,
    pub addr: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub leader: bool,
    /// Status.Message, as the swarm said it (shown with a down node).
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Manager,
    Worker,
}

impl NodeRole {
    pub fn is(self, r: Role) -> bool {
        matches!((self, r), (NodeRole::Manager, Role::Manager) | (NodeRole::Worker, Role::Worker))
    }
}

/// Spec.Availability. `pause` keeps its tasks and takes no new ones:
/// its managers still serve, so the pool treats it as `active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

/// Status.State: only `ready` takes clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    Down,
    Disconnected,
    Unknown,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
            NodeState::Disconnected => "disconnected",
            NodeState::Unknown => "unknown",
        }
    }
}

// The Engine API's schema (v1.24 on), the fields read; others are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiNode {
    #[serde(rename = "ID")]
    id: String,
    spec: ApiSpec,
    #[serde(default)]
    description: Option<ApiDescription>,
    status: ApiStatus,
    #[serde(default)]
    manager_status: Option<ApiManagerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiSpec {
    #[serde(default)]
    name: Option<String>,
    role: NodeRole,
    availability: Availability,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiDescription {
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiStatus {
    state: NodeState,
    #[serde(default)]
    addr: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiManagerStatus {
    #[serde(default)]
    leader: Option<bool>,
    #[serde(default)]
    addr: Option<String>,
}

/// Names and messages are shown on the page and logged: at most this long.
const MAX_TEXT: usize = 256;

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(MAX_TEXT).collect()
}

/// A node left out of a list: no address could be found for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub id: String,
    pub name: String,
    /// Status.State was `ready`: a pool may have wanted it.
    pub ready: bool,
    pub why: String,
}

/// The nodes in `body` and those left out for want of an address, or why
/// the answer is refused.
pub fn parse(body: &[u8]) -> Result<(Vec<Node>, Vec<Skipped>), String> {
    let api: Vec<ApiNode> = serde_json::from_slice(body).map_err(|e| format!("not a node list: {e}"))?;
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(api.len());
    let mut skipped = Vec::new();
    for n in api {
        if n.id.is_empty() || !ids.insert(n.id.clone()) {
            return Err(format!("node ID {:?} empty or repeated", printable(&n.id)));
        }
        let hostname = n.description.as_ref().and_then(|d| d.hostname.clone()).filter(|h| !h.is_empty());
        let name = hostname.or(n.spec.name.clone().filter(|s| !s.is_empty())).unwrap_or_else(|| n.id.clone());
        let addr = match address(&n) {
            Ok(a) => a,
            Err(why) => {
                let ready = n.status.state == NodeState::Ready;
                skipped.push(Skipped { id: printable(&n.id), name: printable(&name), ready, why });
                continue;
            }
        };
        out.push(Node {
            id: printable(&n.id),
            name: printable(&name),
            role: n.spec.role,
            availability: n.spec.availability,
            state: n.status.state,
            addr,
            labels: n.spec.labels.unwrap_or_default(),
            leader: n.manager_status.as_ref().and_then(|m| m.leader).unwrap_or(false),
            message: printable(n.status.message.as_deref().unwrap_or("")),
        });
    }
    Ok((out, skipped))
}

/// Status.Addr; a manager reporting 0.0.0.0 there (real managers do) is
/// reached at the host of ManagerStatus.Addr.
fn address(n: &ApiNode) -> Result<IpAddr, String> {
    let id = printable(&n.id);
    let raw = n.status.addr.as_deref().ok_or_else(|| format!("node {id}: no Status.Addr"))?;
    let ip: IpAddr =
        raw.parse().map_err(|_| format!("node {id}: Status.Addr {:?} is not an address", printable(raw)))?;
    if !ip.is_unspecified() {
        return Ok(ip);
    }
    let Some(m) = n.manager_status.as_ref().and_then(|m| m.addr.as_deref()) else {
        return Err(format!("node {id}: Status.Addr {ip} and no ManagerStatus.Addr"));
    };
    let host = match m.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip(),
        Err(_) => {
            m.parse().map_err(|_| format!("node {id}: ManagerStatus.Addr {:?} is not host:port", printable(m)))?
        }
    };
    if host.is_unspecified() {
        return Err(format!("node {id}: no address (Status.Addr and ManagerStatus.Addr unspecified)"));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: &str, addr: &str, manager_addr: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ID": id, "Version": {"Index": 10}, "CreatedAt": "2026-12-01T00:00:00Z", "UpdatedAt": "2026-12-01T00:00:00Z",
            "Spec": {"Name": "", "Role": role, "Availability": "active", "Labels": {"zone": "dc1"}},
            "Description": {"Hostname": format!("host-{id}"), "Platform": {"OS": "linux"}},
            "Status": {"State": "ready", "Addr": addr, "Message": ""}
        });
        if let Some(m) = manager_addr {
            v["ManagerStatus"] = serde_json::json!({"Leader": true, "Reachability": "reachable", "Addr": m});
        }
        v
    }

    #[test]
    fn a_manager_reporting_0_0_0_0_is_reached_at_its_manager_address() {
        let body = serde_json::json!([
            node("a", "manager", "0.0.0.0", Some("10.0.0.1:2377")),
            node("b", "worker", "10.0.0.2", None)
        ]);
        let (nodes, _) = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(nodes[0].addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(nodes[0].name, "host-a");
        assert!(nodes[0].leader && nodes[0].role == NodeRole::Manager);
        assert_eq!(nodes[1].labels["zone"], "dc1");
    }

    #[test]
    fn anything_unexpected_refuses_the_whole_answer() {
        assert!(parse(b"<html>502</html>").is_err());
        assert!(parse(b"{\"message\":\"no leader\"}").is_err());
        let mut no_field = node("a", "worker", "10.0.0.1", None);
        no_field["Status"].as_object_mut().unwrap().remove("State");
        assert!(parse(serde_json::json!([no_field]).to_string().as_bytes()).is_err());
        let twice = serde_json::json!([node("a", "worker", "10.0.0.1", None), node("a", "worker", "10.0.0.2", None)]);
        assert!(parse(twice.to_string().as_bytes()).is_err());
        let mut odd = node("a", "manager", "10.0.0.1", None);
        odd["Spec"]["Availability"] = "sideways".into();
        assert!(parse(serde_json::json!([odd]).to_string().as_bytes()).is_err());
        assert_eq!(parse(b"[]").unwrap(), (vec![], vec![]));
    }

    #[test]
    fn a_node_without_an_address_is_left_out_and_named_not_the_whole_list() {
        let mut down = node("w", "worker", "0.0.0.0", None);
        down["Status"]["State"] = "down".into();
        let mut no_addr = node("n", "manager", "10.0.0.3", None);
        no_addr["Status"].as_object_mut().unwrap().remove("Addr");
        let bad = node("b", "worker", "ten", None);
        let body = serde_json::json!([node("a", "worker", "10.0.0.1", None), down, no_addr, bad]);
        let (nodes, skipped) = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(nodes.len(), 1);
        let who: Vec<_> = skipped.iter().map(|s| (s.name.as_str(), s.ready)).collect();
        assert_eq!(who, [("host-w", false), ("host-n", true), ("host-b", true)]);
        assert!(skipped[2].why.contains("not an address"));
    }
}
