//! `[cluster]` and a pool's `nodes`: which swarm fills pools and how a
//! pool picks its nodes. Types only; `validate/cluster.rs` reads them from
//! the raw file, `crate::cluster` reads the swarm.

use std::path::PathBuf;
use std::time::Duration;

use super::{HostPort, Pos};

/// The default of `[cluster] refresh`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);

/// `[cluster]`: the swarm that fills pools. `api` empty: none.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// UCP (or Docker Engine API over TLS) endpoints, tried in turn.
    pub api: Vec<HostPort>,
    /// The client bundle's directory (ca.pem, cert.pem, key.pem), made
    /// relative to lb.toml's directory by `config::load`.
    pub bundle: Option<PathBuf>,
    pub bundle_pos: Pos,
    /// How often the node list is read.
    pub refresh: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { api: Vec::new(), bundle: None, bundle_pos: Pos::default(), refresh: DEFAULT_REFRESH }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.api.is_empty()
    }
}

/// A node's role in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// Which nodes a pool takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMatch {
    Role(Role),
    /// A node label (Spec.Labels) and its value; `None`: any value.
    Label(String, Option<String>),
}

/// A pool's `nodes = { role = "manager", port = 443 }` or
/// `nodes = { label = "k=v", port = 443 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSelector {
    pub by: NodeMatch,
    pub port: u16,
}

impl std::fmt::Display for NodeSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match &self.by {
            NodeMatch::Role(r) => write!(f, "{{ role = \"{}\", port = {} }}", r.as_str(), self.port),
            NodeMatch::Label(k, Some(v)) => write!(f, "{{ label = \"{k}={v}\", port = {} }}", self.port),
            NodeMatch::Label(k, None) => write!(f, "{{ label = \"{k}\", port = {} }}", self.port),
        }
    }
}

/// Where a server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ServerSource {
    /// Listed in lb.toml.
    #[default]
    Static,
    /// A swarm node a pool's `nodes` takes.
    Cluster,
}

impl ServerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSource::Static => "static",
            ServerSource::Cluster => "cluster",
        }
    }
}
