//! What the swarm says, as a pool's servers: the nodes a pool's `nodes`
//! takes become servers (drain -> drain, down or disconnected -> down),
//! and the difference between two lists, as the events the history shows.
//! Pure: no I/O, no state.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::config::{AdminState, HostPort, NodeMatch, PoolConfig, ServerConfig, ServerSource};

use super::nodes::{Availability, Node, NodeState};

/// Whether `n` is one of the nodes `m` takes.
fn takes(m: &NodeMatch, n: &Node) -> bool {
    match m {
        NodeMatch::Role(r) => n.role.is(*r),
        NodeMatch::Label(k, v) => n.labels.get(k).is_some_and(|have| v.as_ref().is_none_or(|v| v == have)),
    }
}

/// The servers `pool` takes from `nodes`, by name then address. A node at
/// an address one of the pool's own servers resolves to (`resolved`: the
/// snapshot's answers; an IP as written stands for itself) is left out:
/// the server as written wins, and one backend is never counted twice,
/// whether written "localhost:443" or "127.0.0.1:443".
pub fn servers(pool: &PoolConfig, nodes: &[Node], resolved: &HashMap<HostPort, Vec<SocketAddr>>) -> Vec<ServerConfig> {
    let Some(sel) = &pool.nodes else { return Vec::new() };
    let mut taken: HashSet<SocketAddr> = HashSet::new();
    for s in &pool.servers {
        match resolved.get(&s.address) {
            Some(a) => taken.extend(a.iter().copied()),
            None => taken.extend(s.address.host.parse().ok().map(|ip| SocketAddr::new(ip, s.address.port))),
        }
    }
    let mut out: Vec<ServerConfig> = Vec::new();
    for n in nodes.iter().filter(|n| takes(&sel.by, n)) {
        let address = HostPort { host: n.addr.to_string(), port: sel.port };
        if !taken.insert(SocketAddr::new(n.addr, sel.port)) {
            continue;
        }
        let state = match (n.state, n.availability) {
            (NodeState::Ready, Availability::Drain) => AdminState::Drain,
            (NodeState::Ready, _) => AdminState::Up,
            _ => AdminState::Down,
        };
        out.push(ServerConfig {
            address,
            nth: 0,
            name: Some(n.name.clone()),
            weight: 1,
            backup: false,
            max_conns: 0,
            state,
            slow_start: None,
            pos: Default::default(),
            labels: n.labels.clone(),
            source: ServerSource::Cluster,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.address.host).cmp(&(&b.name, &b.address.host)));
    out
}

/// A change of one discovered server, for the history and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The server's name (the node's host name).
    pub name: String,
    pub address: HostPort,
    pub what: &'static str,
    /// "manager-04 joined the pool", as the page shows it.
    pub text: String,
    /// It comes back to take clients (joined, or active again): its slow
    /// start begins.
    pub back: bool,
}

/// What changed from `before` to `after` (both from [`servers`]).
pub fn changes(before: &[ServerConfig], after: &[ServerConfig]) -> Vec<Change> {
    let name = |s: &ServerConfig| s.name.clone().unwrap_or_else(|| s.address.to_string());
    let change = |s: &ServerConfig, what: &'static str, text: &str, back: bool| Change {
        name: name(s),
        address: s.address.clone(),
        what,
        text: format!("{} {text}", name(s)),
        back,
    };
    let mut out = Vec::new();
    for a in after {
        match before.iter().find(|b| b.address == a.address) {
            None => out.push(change(a, "joined", "joined the pool", a.state == AdminState::Up)),
            Some(b) if b.state != a.state => out.push(match a.state {
                AdminState::Up => change(a, "active", "is active again in the swarm", true),
                AdminState::Drain => change(a, "drained", "drained in the swarm", false),
                AdminState::Down => change(a, "node down", "is down in the swarm", false),
            }),
            Some(_) => {}
        }
    }
    for b in before.iter().filter(|b| !after.iter().any(|a| a.address == b.address)) {
        out.push(change(b, "left", "left the pool (gone from the swarm, or no longer matching)", false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nodes::NodeRole;
    use crate::config::{NodeSelector, Role};

    fn node(name: &str, role: NodeRole, ip: &str) -> Node {
        Node {
            id: name.into(),
            name: name.into(),
            role,
            availability: Availability::Active,
            state: NodeState::Ready,
            addr: ip.parse().unwrap(),
            labels: [("dtr".to_owned(), "yes".to_owned())].into_iter().filter(|_| role == NodeRole::Worker).collect(),
            leader: false,
            message: String::new(),
        }
    }

    fn pool(by: NodeMatch) -> PoolConfig {
        let text = "[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"10.0.0.9:443\"]\n";
        let mut p = crate::config::parse(text, "t").unwrap().pools.remove(0);
        p.nodes = Some(NodeSelector { by, port: 443 });
        p
    }

    #[test]
    fn a_pool_takes_the_nodes_its_selector_names_in_the_state_the_swarm_gives() {
        let mut nodes = vec![
            node("m2", NodeRole::Manager, "10.0.0.2"),
            node("m1", NodeRole::Manager, "10.0.0.1"),
            node("w1", NodeRole::Worker, "10.0.0.3"),
            node("static", NodeRole::Manager, "10.0.0.9"),
        ];
        nodes[0].availability = Availability::Drain;
        let got = servers(&pool(NodeMatch::Role(Role::Manager)), &nodes, &HashMap::new());
        let names: Vec<_> = got.iter().map(|s| s.name.clone().unwrap()).collect();
        assert_eq!(names, ["m1", "m2"], "by name; the static address stays the static server's");
        assert_eq!(got[1].state, AdminState::Drain);
        let by_label = servers(&pool(NodeMatch::Label("dtr".into(), Some("yes".into()))), &nodes, &HashMap::new());
        assert_eq!(by_label.len(), 1);
        assert_eq!(by_label[0].address.to_string(), "10.0.0.3:443");
        let localhost = HostPort { host: "localhost".into(), port: 443 };
        let mut p = pool(NodeMatch::Role(Role::Manager));
        p.servers[0].address = localhost.clone();
        let resolved = HashMap::from([(localhost, vec!["10.0.0.1:443".parse().unwrap()])]);
        let names: Vec<_> = servers(&p, &nodes, &resolved).into_iter().filter_map(|s| s.name).collect();
        assert_eq!(names, ["m2", "static"], "m1 is at the address localhost resolves to: the static server's");
        nodes[1].state = NodeState::Disconnected;
        let down = servers(&pool(NodeMatch::Role(Role::Manager)), &nodes, &HashMap::new());
        assert_eq!(down[0].state, AdminState::Down);
    }

    #[test]
    fn changes_say_who_joined_drained_came_back_and_left() {
        let p = pool(NodeMatch::Role(Role::Manager));
        let mut nodes = vec![node("m1", NodeRole::Manager, "10.0.0.1"), node("m2", NodeRole::Manager, "10.0.0.2")];
        let one = servers(&p, &nodes, &HashMap::new());
        nodes[1].availability = Availability::Drain;
        nodes.push(node("m4", NodeRole::Manager, "10.0.0.4"));
        let two = servers(&p, &nodes, &HashMap::new());
        let texts: Vec<_> = changes(&one, &two).into_iter().map(|c| c.text).collect();
        assert_eq!(texts, ["m2 drained in the swarm", "m4 joined the pool"]);
        nodes.remove(0);
        nodes[0].availability = Availability::Active;
        let three = servers(&p, &nodes, &HashMap::new());
        let c = changes(&two, &three);
        assert_eq!(c.iter().map(|c| c.what).collect::<Vec<_>>(), ["active", "left"]);
        assert!(c[0].back && !c[1].back);
    }
}
