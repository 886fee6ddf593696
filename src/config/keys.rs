//! Every lb.toml key, declared once: its dotted path, the type of its
//! value, its default and a one-line doc.
//!
//! The rest is derived from or tested against [`KEYS`]: the reader
//! (`raw.rs`) takes the keys each table accepts from [`names`], so an
//! unknown-key error lists exactly these; tests/keys.rs proves that the
//! reader reads every declared key (a value of the wrong type is reported
//! at that key), that each default written here is what the validator
//! applies, that every key `check --print` writes is declared, and that
//! docs/configuration.md documents every key and no other.
//!
//! A path names tables by their place in the file: `admin.listen`,
//! `defaults.connect_timeout`, `listener[].bind` (`[]`: every entry of an
//! array of tables), `pool.*.health.rise` (`*`: any pool's name). A
//! `[defaults]` key marked `per_pool` may be set in a `[pool.NAME]` table
//! too, for that pool only: it is declared once, under `defaults`.

use Type as T;

/// The type of a key's value, as lb.toml writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A string with a unit: `"500ms"`, `"5s"`, `"10m"`; `"0"` or
    /// `"none"` where the key may be off.
    Duration,
    String,
    Integer,
    Bool,
    /// `false`, `true` or `{ idle = "60s", interval = "10s", count = 6 }`.
    Keepalive,
    List,
    Table,
}

impl Type {
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Duration => "duration",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Bool => "boolean",
            Type::Keepalive => "keepalive",
            Type::List => "list",
            Type::Table => "table",
        }
    }
}

/// One key of lb.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// `defaults.connect_timeout`, `listener[].bind`, `pool.*.health.rise`.
    pub path: &'static str,
    pub ty: Type,
    /// The default as lb.toml would write it (`"3s"`, `2`, `false`), which
    /// setting it to changes nothing; or, in parentheses, what leaving the
    /// key out means (`(required)`, `(no limit)`).
    pub default: &'static str,
    /// What it does, in one line.
    pub doc: &'static str,
    /// A `[defaults]` key that a `[pool.NAME]` table may set for itself.
    pub per_pool: bool,
}

impl Key {
    /// The key's own name: the last segment of its path.
    pub fn name(&self) -> &'static str {
        let last = self.path.rsplit('.').next().unwrap_or(self.path);
        last.strip_suffix("[]").unwrap_or(last)
    }

    /// The table it is set in: its path without its name (`""` at the top).
    pub fn table(&self) -> &'static str {
        self.path.rsplit_once('.').map_or("", |(t, _)| t)
    }

    /// Whether the default is a value lb.toml could hold (not a description
    /// in parentheses).
    pub fn default_is_value(&self) -> bool {
        !self.default.starts_with('(')
    }
}

const fn key(path: &'static str, ty: Type, default: &'static str, doc: &'static str) -> Key {
    Key { path, ty, default, doc, per_pool: false }
}

/// A `[defaults]` key that a pool may set for itself.
const fn pool_key(path: &'static str, ty: Type, default: &'static str, doc: &'static str) -> Key {
    Key { path, ty, default, doc, per_pool: true }
}

const KEEPALIVE: &str = r#"{ idle = "60s", interval = "10s", count = 6 }"#;

/// Every key, in the order each table lists them (the order of the
/// "expected one of" in an unknown-key error).
pub const KEYS: &[Key] = &[
    key("workers", T::Integer, "(one per CPU)", "tokio worker threads, 1 to 1024 (UCP_LB_WORKERS overrides it)"),
    // [admin]
    key(
        "admin.listen",
        T::String,
        r#""127.0.0.1:9900""#,
        "where /metrics, /status, /healthz and the status page listen",
    ),
    key(
        "admin.token_file",
        T::String,
        "(none: POST endpoints off)",
        "the file holding the admin token; enables the POST endpoints",
    ),
    key(
        "admin.status_needs_token",
        T::Bool,
        "false",
        "GET /status, / and /metrics need the token too (/healthz never does)",
    ),
    key(
        "admin.control_socket",
        T::String,
        r#"("/run/ucp-lb/control.sock", only a warning if it cannot be made)"#,
        r#"the Unix socket `ucp-lb --upgrade` takes over through; "" for none (UCP_LB_CONTROL_SOCKET overrides it)"#,
    ),
    // [defaults]: every pool inherits these.
    pool_key(
        "defaults.balance",
        T::String,
        r#""round_robin""#,
        "how a pool picks a server: round_robin, least_conn, random_two, source_hash or source_hash_map",
    ),
    pool_key("defaults.connect_timeout", T::Duration, r#""3s""#, "time allowed for the TCP connect to a server"),
    pool_key(
        "defaults.idle_timeout",
        T::Duration,
        r#""none""#,
        r#"close a connection quiet both ways this long; "none": never"#,
    ),
    pool_key(
        "defaults.max_fails",
        T::Integer,
        "2",
        "failed connects within fail_timeout that eject a server (passive ejection); 0 switches it off",
    ),
    pool_key(
        "defaults.fail_timeout",
        T::Duration,
        r#""30s""#,
        "the window of max_fails, and how long an ejected server sits out",
    ),
    pool_key(
        "defaults.retries",
        T::Integer,
        "2",
        r#"further servers tried after a failed connect, 0 to 1000, or "all""#,
    ),
    pool_key(
        "defaults.all_down",
        T::String,
        r#""fail_open""#,
        "with no server eligible: fail_open (route over every server not set down) or reject",
    ),
    pool_key("defaults.resolve_interval", T::Duration, r#""30s""#, "how often host names are looked up again"),
    pool_key("defaults.shutdown_timeout", T::Duration, r#""30s""#, "how long open connections get after SIGTERM"),
    pool_key(
        "defaults.slow_start",
        T::Duration,
        r#""0s""#,
        "after a server comes back from down, its weight grows from a tenth to all of it over this",
    ),
    pool_key(
        "defaults.on_server_down",
        T::String,
        r#""keep""#,
        "the open sessions of a server that goes down: keep them, or close them (spread over close_spread)",
    ),
    pool_key(
        "defaults.close_spread",
        T::Duration,
        r#""5s""#,
        r#"with on_server_down = "close": the time over which a server's sessions are closed"#,
    ),
    pool_key(
        "defaults.server_keepalive",
        T::Keepalive,
        KEEPALIVE,
        "TCP keepalive of the sockets to servers; false: off",
    ),
    pool_key(
        "defaults.server_keepalive.idle",
        T::Duration,
        r#""60s""#,
        "quiet time before the first probe: whole seconds, 1s to 32767s",
    ),
    pool_key(
        "defaults.server_keepalive.interval",
        T::Duration,
        r#""10s""#,
        "time between unanswered probes: whole seconds, 1s to 32767s",
    ),
    pool_key(
        "defaults.server_keepalive.count",
        T::Integer,
        "6",
        "unanswered probes before the server counts as gone, 1 to 127",
    ),
    pool_key(
        "defaults.send_proxy_protocol",
        T::String,
        r#""off""#,
        r#"send servers a PROXY protocol header with the client's address first: "v1", "v2" or "off""#,
    ),
    key(
        "defaults.access_log",
        T::String,
        r#""off""#,
        r#"where listeners log finished connections: a file, "stdout", "stderr" or "off""#,
    ),
    key(
        "defaults.access_log_format",
        T::String,
        r#""text""#,
        r#"the access log's lines: "text", "json" or a template of $variables"#,
    ),
    key(
        "defaults.stop_grace",
        T::Duration,
        r#""0""#,
        "after SIGTERM, how long /healthz says stopping while listeners still accept (UCP_LB_STOP_GRACE overrides it)",
    ),
    key(
        "defaults.client_keepalive",
        T::Keepalive,
        KEEPALIVE,
        "TCP keepalive of clients' sockets, for every listener; false: off",
    ),
    key(
        "defaults.client_keepalive.idle",
        T::Duration,
        r#""60s""#,
        "quiet time before the first probe: whole seconds, 1s to 32767s",
    ),
    key(
        "defaults.client_keepalive.interval",
        T::Duration,
        r#""10s""#,
        "time between unanswered probes: whole seconds, 1s to 32767s",
    ),
    key(
        "defaults.client_keepalive.count",
        T::Integer,
        "6",
        "unanswered probes before the client counts as gone, 1 to 127",
    ),
    key(
        "defaults.max_pending_hellos",
        T::Integer,
        "1024",
        "routed listeners: clients waiting for their ClientHello at most, per listener; more are closed at once and counted",
    ),
    key(
        "defaults.real_ip_from",
        T::List,
        "[]",
        r#"PROXY protocol listeners inherit it: sources ("10.0.0.0/8", "192.0.2.7") whose header's client address is believed"#,
    ),
    key(
        "defaults.proxy_protocol_timeout",
        T::Duration,
        r#""5s""#,
        "PROXY protocol listeners inherit it: how long a client has to send its whole header",
    ),
    // [[listener]]
    key(
        "listener[].bind",
        T::String,
        "(required)",
        r#"the IP address and port to listen on ("0.0.0.0:443", "[::]:443")"#,
    ),
    key(
        "listener[].pool",
        T::String,
        "(required without routes; with them, clients no route takes are closed)",
        "the pool clients go to; with routes, the pool of clients no route takes",
    ),
    key(
        "listener[].max_connections",
        T::Integer,
        "(no limit)",
        "open clients at most; more are closed at once and counted",
    ),
    key("listener[].access_log", T::String, "(defaults.access_log)", "this listener's own access_log"),
    key(
        "listener[].access_log_format",
        T::String,
        "(defaults.access_log_format)",
        "this listener's own access_log_format",
    ),
    key(
        "listener[].access",
        T::List,
        "[]",
        r#"allow and deny rules ("allow 10.0.0.0/8", "deny all"), the first match deciding; no match lets in"#,
    ),
    key(
        "listener[].max_connections_per_client",
        T::Integer,
        "(no limit)",
        "open connections one client address may hold",
    ),
    key(
        "listener[].max_connection_rate_per_client",
        T::Integer,
        "(no limit)",
        "new connections one client address may open per second",
    ),
    key(
        "listener[].limit",
        T::String,
        "(none: the listener's own per-client keys)",
        "a [limit.NAME] whose per-client counts this listener shares with every listener naming it",
    ),
    key(
        "listener[].routes",
        T::Table,
        "(none)",
        r#"TLS server names ("ucp.example.com", "*.example.com") to pools, read from the ClientHello"#,
    ),
    key(
        "listener[].preread_timeout",
        T::Duration,
        r#""5s""#,
        "with routes: how long a client has to send a complete ClientHello",
    ),
    key(
        "listener[].max_pending_hellos",
        T::Integer,
        "(defaults.max_pending_hellos)",
        "with routes: this listener's own max_pending_hellos",
    ),
    key(
        "listener[].proxy_protocol",
        T::Bool,
        "false",
        "every client must open with a PROXY protocol header (v1 or v2), read and consumed; without one it is closed and counted",
    ),
    key(
        "listener[].real_ip_from",
        T::List,
        "(defaults.real_ip_from)",
        "with proxy_protocol: sources whose header's address becomes the client's address (nginx's set_real_ip_from)",
    ),
    key(
        "listener[].proxy_protocol_timeout",
        T::Duration,
        "(defaults.proxy_protocol_timeout)",
        "with proxy_protocol: this listener's own proxy_protocol_timeout",
    ),
    key(
        "listener[].proxy_protocol_max_header",
        T::Integer,
        "4096",
        "with proxy_protocol: a header's bytes at most (v2 with its TLVs, 232 to 65551; v1 is 107 by the specification); a longer one is refused",
    ),
    key(
        "listener[].client_keepalive",
        T::Keepalive,
        "(defaults.client_keepalive)",
        "this listener's own client_keepalive",
    ),
    // [pool.NAME]: its servers, its check, and any per-pool [defaults] key.
    key(
        "pool.*.servers",
        T::List,
        "(required)",
        r#"the pool's servers: "host:port", or tables of address, name, weight, backup, max_conns, state, slow_start, labels"#,
    ),
    key(
        "pool.*.servers[].address",
        T::String,
        "(required)",
        "host:port; a host name is resolved, each of its addresses a server",
    ),
    key("pool.*.servers[].name", T::String, "(the address)", "a name for people, shown instead of the address"),
    key("pool.*.servers[].weight", T::Integer, "1", "the server's share of clients, 1 to 1000"),
    key("pool.*.servers[].backup", T::Bool, "false", "takes clients only when no primary server is eligible"),
    key("pool.*.servers[].max_conns", T::Integer, "0", "open connections at most; 0: no limit"),
    key("pool.*.servers[].state", T::String, r#""up""#, "up, drain (no new connections, open ones go on) or down"),
    key("pool.*.servers[].slow_start", T::Duration, "(the pool's slow_start)", "this server's own slow_start"),
    key(
        "pool.*.servers[].labels",
        T::Table,
        "(none)",
        r#"labels the pool's prefer reads, like { zone = "dc1" } (a swarm node's come from the swarm)"#,
    ),
    key(
        "pool.*.prefer",
        T::Table,
        "(none: no server preferred)",
        r#"{ label = "zone", value = "dc1" }: servers with that label take every client while one is eligible"#,
    ),
    key(
        "pool.*.prefer.label",
        T::String,
        "(required)",
        "the label the preferred servers carry; the others take clients only when none of these is eligible",
    ),
    key("pool.*.prefer.value", T::String, "(required)", "the label's value the preferred servers have"),
    // [pool.NAME.health]: no table, no active check.
    key("pool.*.health.kind", T::String, r#""https""#, "https, http, tcp (a connect only) or none (no active check)"),
    key("pool.*.health.path", T::String, r#""/_ping""#, "what the check GETs"),
    key("pool.*.health.interval", T::Duration, r#""2s""#, "time between probes"),
    key("pool.*.health.timeout", T::Duration, r#""1s""#, "the time a probe has: connect, TLS handshake and response"),
    key("pool.*.health.rise", T::Integer, "2", "consecutive successes that bring a server back"),
    key("pool.*.health.fall", T::Integer, "2", "consecutive failures that take a server out"),
    key("pool.*.health.expect_status", T::List, "[200]", r#"the statuses that pass: numbers, or classes like "2xx""#),
    key("pool.*.health.expect_body", T::String, "(none)", "a string the body must contain (in its first 64 KiB)"),
    key("pool.*.health.expect_json", T::Table, "(none)", "top-level JSON fields the body must have, with these values"),
    key("pool.*.health.sni", T::String, "(the server's host name)", "the TLS server name the probe sends"),
    key("pool.*.health.host", T::String, "(sni, else the server's host name)", "the Host header the probe sends"),
    key(
        "pool.*.health.ca_file",
        T::String,
        "(none: not verified)",
        "a PEM CA the server's certificate is verified against",
    ),
    key("pool.*.health.port", T::Integer, "(the server's)", "probe this port instead of the server's own"),
    // A pool's nodes from [cluster].
    key(
        "pool.*.nodes",
        T::Table,
        "(none: servers only)",
        r#"the swarm's nodes this pool takes besides its servers: { role = "manager", port = 443 } or { label = "k=v", port = 443 }"#,
    ),
    key("pool.*.nodes.role", T::String, "(none)", "manager or worker: the nodes of this role (or give label)"),
    key(
        "pool.*.nodes.label",
        T::String,
        "(none)",
        r#""k=v" (or "k"): the nodes whose Spec.Labels carry it (or give role)"#,
    ),
    key("pool.*.nodes.port", T::Integer, "(required)", "the port clients are sent to on each node"),
    key(
        "pool.*.health.client_cert",
        T::String,
        "(none)",
        "a PEM client certificate (chain) probes present, as the cluster's admin; needs client_key",
    ),
    key(
        "pool.*.health.client_key",
        T::String,
        "(none)",
        "the PEM private key of client_cert; owner-only, like the token file",
    ),
    key(
        "pool.*.health.client_bundle",
        T::Bool,
        "false",
        "present [cluster] bundle's cert.pem and key.pem (instead of client_cert and client_key)",
    ),
    // [limit.NAME]: per-client limits that the listeners naming it share.
    key(
        "limit.*.max_connections_per_client",
        T::Integer,
        "(no limit)",
        "open connections one client address may hold across every listener naming the limit",
    ),
    key(
        "limit.*.max_connection_rate_per_client",
        T::Integer,
        "(no limit)",
        "new connections one client address may open per second across every listener naming the limit",
    ),
    // [cluster]: the swarm that fills pools' nodes.
    key(
        "cluster.api",
        T::List,
        "(none: no cluster read)",
        "UCP (or Docker Engine API over TLS) endpoints, host:port, tried in turn",
    ),
    key(
        "cluster.bundle",
        T::String,
        "(required with api)",
        "a UCP client bundle's directory: ca.pem, cert.pem, key.pem (relative to lb.toml)",
    ),
    key("cluster.refresh", T::Duration, r#""10s""#, "how often the node list is read"),
];

/// The keys `table` accepts, in declaration order: `""` (the top),
/// `admin`, `defaults`, `listener[]`, `pool.*` (its own keys, then every
/// per-pool `[defaults]` key), `pool.*.servers[]`, `pool.*.health`, and a
/// keepalive key's table (`defaults.client_keepalive`).
pub fn names(table: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let mut add = |name: &'static str| {
        if !out.contains(&name) {
            out.push(name);
        }
    };
    for k in KEYS {
        let rest =
            if table.is_empty() { Some(k.path) } else { k.path.strip_prefix(table).and_then(|r| r.strip_prefix('.')) };
        if let Some(rest) = rest {
            let next = rest.split('.').next().unwrap_or(rest);
            add(next.strip_suffix("[]").unwrap_or(next));
        }
    }
    if table == "pool.*" {
        for k in KEYS.iter().filter(|k| k.per_pool && k.table() == "defaults") {
            add(k.name());
        }
    }
    out
}

/// The declaration of `path` (as [`normalise`] writes it). A pool's own
/// `[defaults]` key (`pool.*.balance`) is the `[defaults]` one, and so are
/// the keys within any keepalive key (`listener[].client_keepalive.idle`).
pub fn find(path: &str) -> Option<&'static Key> {
    if let Some(k) = KEYS.iter().find(|k| k.path == path) {
        return Some(k);
    }
    if let Some(rest) = path.strip_prefix("pool.*.")
        && let Some(k) = KEYS.iter().find(|k| k.per_pool && k.path.strip_prefix("defaults.") == Some(rest))
    {
        return Some(k);
    }
    let (holder, name) = path.rsplit_once('.')?;
    let holder = find(holder).filter(|h| h.ty == Type::Keepalive)?;
    let own = format!("defaults.{}.{name}", holder.name());
    KEYS.iter().find(|k| k.path == own)
}

/// Whether a key named `name` takes a duration (a bare number there gets
/// its own advice).
pub fn is_duration(name: &str) -> bool {
    KEYS.iter().any(|k| k.ty == Type::Duration && k.name() == name)
}

/// A key as an error names it (`listener[0].bind`, `pool.ucp.health.rise`),
/// as a declared path (`listener[].bind`, `pool.*.health.rise`).
pub fn normalise(key: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for (i, seg) in key.split('.').enumerate() {
        let seg = match seg.find('[') {
            Some(b) => format!("{}[]", &seg[..b]),
            None => seg.to_owned(),
        };
        if i == 1 && out.first().is_some_and(|p| p == "pool" || p == "limit") {
            out.push("*".into());
        } else {
            out.push(seg);
        }
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_declared_once() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(KEYS[..i].iter().all(|o| o.path != k.path), "{} twice", k.path);
            assert!(!k.doc.is_empty() && !k.doc.contains('\n'), "{}: one line of doc", k.path);
        }
    }

    #[test]
    fn tables_list_their_keys_in_order() {
        assert_eq!(names(""), ["workers", "admin", "defaults", "listener", "pool", "limit", "cluster"]);
        assert_eq!(names("admin"), ["listen", "token_file", "status_needs_token", "control_socket"]);
        assert_eq!(names("defaults.server_keepalive"), ["idle", "interval", "count"]);
        let pool = names("pool.*");
        assert_eq!(pool[..5], ["servers", "prefer", "health", "nodes", "balance"]);
        assert_eq!(pool.last(), Some(&"send_proxy_protocol"));
    }

    #[test]
    fn paths_as_errors_name_them_find_their_declaration() {
        assert_eq!(normalise("listener[3].client_keepalive.idle"), "listener[].client_keepalive.idle");
        assert_eq!(normalise("pool.ucp.servers[0].weight"), "pool.*.servers[].weight");
        assert_eq!(find(&normalise("pool.ucp.balance")).map(|k| k.path), Some("defaults.balance"));
        assert_eq!(find("pool.*.stop_grace"), None);
        let idle = find("listener[].client_keepalive.idle").map(|k| k.path);
        assert_eq!(idle, Some("defaults.client_keepalive.idle"));
        let count = find("pool.*.server_keepalive.count").map(|k| k.path);
        assert_eq!(count, Some("defaults.server_keepalive.count"));
        assert_eq!(find("listener[].bind.idle"), None);
        assert_eq!(find(&normalise("pool.ucp.health.rise")).map(|k| k.default), Some("2"));
        assert_eq!(normalise("limit.ucp.max_connections_per_client"), "limit.*.max_connections_per_client");
        assert!(is_duration("idle") && is_duration("timeout") && !is_duration("count"));
    }
}
