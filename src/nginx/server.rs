//! `server {}` blocks as listeners: their `listen`s, `proxy_*` settings
//! and `proxy_pass` target (an upstream's pool, or one of its own for a
//! `host:port`).

use super::ConvertError;
use super::convert::{
    Accept, AccessLog, Admission, Converter, Listener, Pool, Proxy, Server, parse_format_duration, placeholder,
    unfilled,
};
use super::read::Directive;

/// A carried `listen`: its bind address, `so_keepalive` (as the TOML
/// value of `client_keepalive`), whether it reads a PROXY header.
pub(super) struct Listen {
    pub(super) bind: String,
    pub(super) keepalive: Option<String>,
    pub(super) proxy_protocol: bool,
}

/// A carried `listen`, its comments and file:line.
type Bind = (Listen, Vec<String>, String);

/// What the directives of one `server {}` say.
#[derive(Default)]
struct Block<'d> {
    proxy: Proxy,
    admission: Admission,
    accept: Accept,
    ssl_preread: bool,
    preread_timeout: Option<String>,
    binds: Vec<Bind>,
    access_log: Option<AccessLog>,
    /// Its `proxy_pass`.
    target: Option<&'d Directive>,
    /// Comment lines for its first listener.
    notes: Vec<String>,
    /// nginx Plus `health_check` and `health_check_timeout`.
    health: Option<&'d Directive>,
    health_timeout: Option<&'d Directive>,
}

impl Converter {
    /// Reads a `proxy_*` directive into `p`; false if it is not one.
    pub(super) fn proxy_directive(&mut self, d: &Directive, p: &mut Proxy) -> Result<bool, ConvertError> {
        let one = || match d.args.as_slice() {
            [a] => Ok(a.as_str()),
            _ => Err(d.err(format!("{} takes one value", d.name))),
        };
        let time = |v: &str| parse_format_duration(v).map_err(|e| d.err(format!("{}: {e}", d.name)));
        match d.name.as_str() {
            "proxy_connect_timeout" => p.connect_timeout = Some(time(one()?)?),
            "proxy_timeout" => {
                let t = time(one()?)?;
                p.idle_timeout = Some(if t.is_zero() { None } else { Some(t) });
            }
            "proxy_next_upstream" => {
                p.next_upstream = Some(match one()? {
                    "on" => true,
                    "off" => false,
                    v => return Err(d.err(format!("proxy_next_upstream: expected on or off, found \"{v}\""))),
                })
            }
            "proxy_protocol" => {
                p.send_proxy_protocol = Some(match one()? {
                    "on" => true,
                    "off" => false,
                    v => return Err(d.err(format!("proxy_protocol: expected on or off, found \"{v}\""))),
                })
            }
            "proxy_socket_keepalive" => {
                p.socket_keepalive = Some(match one()? {
                    "on" => true,
                    "off" => false,
                    v => return Err(d.err(format!("proxy_socket_keepalive: expected on or off, found \"{v}\""))),
                })
            }
            "proxy_next_upstream_tries" => {
                let v = one()?;
                p.tries = Some(v.parse().map_err(|_| d.err(format!("expected a whole number, found \"{v}\"")))?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// One `server {}`: a listener per carried `listen`, sending to the
    /// pool of its `proxy_pass` (or routing by a `map`); the stream level's
    /// `proxy_*`, `allow`/`deny`, `limit_conn` and `access_log` apply where
    /// the block sets none of its own.
    pub(super) fn server_block(
        &mut self,
        d: &Directive,
        stream: &Proxy,
        stream_admission: &Admission,
    ) -> Result<(), ConvertError> {
        let lost_before = self.lost.len();
        let block = self.read_block(d)?;
        let Some(target) = block.target else {
            let n = self.not_carried(d, "a server {} without proxy_pass");
            self.head_notes.push(n);
            return Ok(());
        };
        if block.binds.is_empty() && self.lost.len() > lost_before {
            // Each listen is an error already: its comment goes to the head.
            self.head_notes.extend(block.notes);
            return Ok(());
        }
        if block.binds.is_empty() {
            let n = self.not_carried(d, "no listen that ucp-lb can carry");
            self.head_notes.push(n);
            return Ok(());
        }
        let [to] = target.args.as_slice() else {
            return Err(target.err("proxy_pass takes one upstream name or host:port"));
        };
        if let Some(p) = placeholder(to) {
            return Err(target.err(format!(
                "proxy_pass {to}: {p} is a placeholder (as in Docker's example configs): fill it in, then convert"
            )));
        }
        if let Some(var) = unfilled(to).filter(|v| v.starts_with("${")) {
            return Err(target.err(format!(
                "proxy_pass {to}: {var} is a template variable that was never filled in: fill it in, then convert"
            )));
        }
        let mut notes = block.notes;
        let mut proxy = block.proxy.or(stream);
        // `off` is nginx's default: the same as not saying it.
        proxy.send_proxy_protocol = proxy.send_proxy_protocol.filter(|&on| on);
        let access_log = block.access_log.or_else(|| self.stream_log.clone());
        let (idx, routes) = if to.contains('$') {
            match self.routed_by_map(to, target, block.ssl_preread, &mut notes)? {
                Some(r) => r,
                None => return Ok(()),
            }
        } else {
            (Some(self.pool_for(to, target)?), Vec::new())
        };
        for i in idx.iter().copied().chain(routes.iter().map(|r| r.1)).collect::<Vec<_>>() {
            self.use_proxy(i, &proxy, d, to, &mut notes);
            if let Some(h) = block.health {
                self.health_check(i, h, block.health_timeout, &mut notes)?;
            }
        }
        if let (None, Some(t)) = (block.health, block.health_timeout) {
            let n = self.not_carried(t, "no health_check in this server {}");
            notes.push(n);
        }
        let pool = idx.map(|i| self.pools[i].name.clone());
        let routes: Vec<(String, String)> = routes.into_iter().map(|(n, i)| (n, self.pools[i].name.clone())).collect();
        let admission = block.admission;
        let access = admission.access.or_else(|| stream_admission.access.clone()).unwrap_or_default();
        let accept = block.accept.or(&self.stream_accept);
        let (real_ip_from, proxy_protocol_timeout) = Converter::accept_keys(&accept);
        if !block.binds.iter().any(|(l, ..)| l.proxy_protocol) {
            self.accept_unused(&block.accept, &mut notes);
        }
        let (per_client, zones) =
            self.per_client(admission.limits.or_else(|| stream_admission.limits.clone()), &mut notes);
        let like = Listener {
            bind: String::new(),
            access_log,
            at: String::new(),
            pool,
            routes,
            preread_timeout: block.preread_timeout,
            comments: Vec::new(),
            notes: Vec::new(),
            access,
            per_client,
            zones,
            keepalive: None,
            proxy_protocol: false,
            real_ip_from,
            proxy_protocol_timeout,
        };
        self.add_listeners(d, block.binds, notes, like);
        Ok(())
    }

    /// Reads the directives of server block `d`; what cannot be carried is
    /// warned about and kept as a note.
    /// Every directive's error is kept (all are reported); one makes the
    /// block's an error with no message of its own.
    fn read_block<'d>(&mut self, d: &'d Directive) -> Result<Block<'d>, ConvertError> {
        let mut b = Block::default();
        let before = self.errors.len();
        for x in d.block.as_deref().unwrap_or_default() {
            let r = self.block_directive(x, &mut b);
            self.keep(r);
        }
        if self.errors.len() > before {
            return Err(d.err(String::new()));
        }
        Ok(b)
    }

    /// One directive of a `server {}` into `b`.
    fn block_directive<'d>(&mut self, x: &'d Directive, b: &mut Block<'d>) -> Result<(), ConvertError> {
        if self.proxy_directive(x, &mut b.proxy)?
            || self.admission_directive(x, &mut b.admission)?
            || self.accept_directive(x, &mut b.accept)?
        {
            return Ok(());
        }
        match x.name.as_str() {
            "listen" => {
                if let Some(listen) = self.listen(x, &mut b.notes)? {
                    let bind = listen.bind.clone();
                    // nginx refuses a duplicate listen too ("duplicate
                    // ... address and port pair"): the input's mistake,
                    // said at its place.
                    let first = self
                        .listeners
                        .iter()
                        .map(|l| (&l.bind, l.at.clone()))
                        .chain(b.binds.iter().map(|(l, _, at)| (&l.bind, at.clone())))
                        .find(|(bound, _)| **bound == bind);
                    if let Some((_, at)) = first {
                        return Err(
                            x.err(format!("listen {}: {bind} is already listened on at {at}", x.args.join(" ")))
                        );
                    }
                    b.binds.push((listen, x.comments.clone(), x.at()));
                }
            }
            "proxy_pass" => b.target = Some(x),
            "ssl_preread" => b.ssl_preread = x.args.first().is_some_and(|v| v == "on"),
            "preread_timeout" => {
                let [v] = x.args.as_slice() else { return Err(x.err("preread_timeout takes one time")) };
                let t = parse_format_duration(v).map_err(|e| x.err(format!("preread_timeout {v}: {e}")))?;
                b.preread_timeout = Some(crate::config::format_duration(t));
            }
            "preread_buffer_size" => {
                let n = self.warn(x, "ucp-lb reads a ClientHello of up to 16 KiB".into());
                b.notes.push(n);
            }
            "access_log" => b.access_log = Some(self.access_log(x, &mut b.notes)?),
            "health_check" => b.health = Some(x),
            "health_check_timeout" => b.health_timeout = Some(x),
            _ => {
                let n = match self.no_difference(x) {
                    Some(n) => n,
                    None => self.not_carried(x, "no ucp-lb equivalent"),
                };
                b.notes.push(n);
            }
        }
        Ok(())
    }

    /// A listener like `like` for each of server `d`'s carried `listen`s;
    /// the first also has the block's comments and `notes`.
    fn add_listeners(&mut self, d: &Directive, binds: Vec<Bind>, mut notes: Vec<String>, like: Listener) {
        for (i, (listen, mut comments, at)) in binds.into_iter().enumerate() {
            if i == 0 {
                let mut c = d.comments.clone();
                c.append(&mut comments);
                comments = c;
            }
            let accepting = listen.proxy_protocol;
            self.listeners.push(Listener {
                bind: listen.bind,
                at,
                comments,
                notes: if i == 0 { std::mem::take(&mut notes) } else { Vec::new() },
                keepalive: listen.keepalive,
                proxy_protocol: accepting,
                // A listener that reads no header has no use for them.
                real_ip_from: if accepting { like.real_ip_from.clone() } else { Vec::new() },
                proxy_protocol_timeout: like.proxy_protocol_timeout.clone().filter(|_| accepting),
                ..like.clone()
            });
        }
    }

    /// The pool `proxy_pass to` sends to: an upstream's, or a pool of its
    /// own for a `host:port`.
    pub(super) fn pool_for(&mut self, to: &str, at: &Directive) -> Result<usize, ConvertError> {
        if let Some(i) = self.pools.iter().position(|p| p.origin == to) {
            return Ok(i);
        }
        if self.failed_upstreams.iter().any(|u| u == to) {
            // Its error is reported already: only stop here.
            return Err(at.err(String::new()));
        }
        if crate::config::parse_host_port(to).is_err() {
            return Err(
                at.err(format!("proxy_pass {to}: no upstream \"{to}\" and not host:port (nginx refuses this too)"))
            );
        }
        let name = self.pool_name(&format!("direct_{to}"));
        self.pools.push(Pool {
            name,
            origin: to.to_owned(),
            at: at.at(),
            comments: Vec::new(),
            balance: "round_robin",
            servers: vec![Server::new(to, Vec::new())],
            notes: vec![format!("nginx: proxy_pass {to} straight to one server ({})", at.at())],
            proxy: None,
            used_at: String::new(),
            health: None,
        });
        Ok(self.pools.len() - 1)
    }

    /// Gives pool `idx` the proxy_* settings of the server `d` (the first
    /// server to use a pool sets them; another that differs is said).
    fn use_proxy(&mut self, idx: usize, proxy: &Proxy, d: &Directive, to: &str, notes: &mut Vec<String>) {
        match &self.pools[idx].proxy {
            None => {
                self.pools[idx].proxy = Some(proxy.clone());
                self.pools[idx].used_at = d.at();
            }
            Some(first) if first != proxy => {
                let first_at = self.pools[idx].used_at.clone();
                let n = self.warn(
                    d,
                    format!(
                        "proxies to {to} with other proxy_* settings than the server at {first_at}; ucp-lb keeps them \
                         per pool: the first are used"
                    ),
                );
                notes.push(n);
            }
            Some(_) => {}
        }
    }

    /// The bind address of a `listen`, its `so_keepalive` (as the TOML
    /// value of `client_keepalive`) and `proxy_protocol`, or None (with a
    /// note) if it cannot be carried.
    pub(super) fn listen(&mut self, d: &Directive, notes: &mut Vec<String>) -> Result<Option<Listen>, ConvertError> {
        let Some(addr) = d.args.first() else {
            return Err(d.err("listen needs an address or port"));
        };
        for p in &d.args[1..] {
            let skip_why = match p.split('=').next().unwrap_or(p) {
                "udp" => Some("ucp-lb balances TCP only"),
                "ssl" => Some("ucp-lb passes TLS through and does not terminate it"),
                p => self.proxy_listen(p).err(),
            };
            if let Some(why) = skip_why {
                let n = self.lose_listener(d, addr, why);
                notes.push(n);
                return Ok(None);
            }
        }
        let bind = if addr.chars().all(|c| c.is_ascii_digit()) {
            format!("0.0.0.0:{addr}")
        } else if let Some(port) = addr.strip_prefix("*:") {
            format!("0.0.0.0:{port}")
        } else if let Some(port) = addr.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else if addr.parse::<std::net::SocketAddr>().is_ok() {
            addr.clone()
        } else {
            let n =
                self.lose_listener(d, addr, "ucp-lb binds IP addresses (and *, localhost), not names or unix: sockets");
            notes.push(n);
            return Ok(None);
        };
        let mut keepalive = None;
        let mut proxy_protocol = false;
        let mut extra: Vec<&str> = Vec::new();
        for a in &d.args[1..] {
            match a.strip_prefix("so_keepalive=") {
                Some(v) => keepalive = Some(self.so_keepalive(d, v, notes)?),
                None if a == "proxy_protocol" => proxy_protocol = true,
                None => extra.push(a),
            }
        }
        if !extra.is_empty() {
            let n = self.warn(
                d,
                format!(
                    "listening on {bind}; parameters not carried over: {} (ucp-lb sets backlog 1024 and \
                     SO_REUSEADDR itself)",
                    extra.join(" ")
                ),
            );
            notes.push(n);
        }
        Ok(Some(Listen { bind, keepalive, proxy_protocol }))
    }

    /// `so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt]` as the TOML
    /// value of `client_keepalive`. What nginx leaves to the kernel (`on`,
    /// an empty field) takes ucp-lb's default instead, said in a note.
    fn so_keepalive(&mut self, d: &Directive, v: &str, notes: &mut Vec<String>) -> Result<String, ConvertError> {
        let kernel = "nginx leaves it to the kernel (net.ipv4.tcp_keepalive_*: 7200 s, 75 s, 9 by default); \
                      ucp-lb uses its own default (60 s, 10 s, 6)";
        match v {
            "off" => return Ok("false".into()),
            "on" => {
                notes.push(format!("nginx: so_keepalive=on  ({}): {kernel}", d.at()));
                return Ok("true".into());
            }
            _ => {}
        }
        let parts: Vec<&str> = v.split(':').collect();
        let [idle, interval, count] = parts.as_slice() else {
            return Err(d.err(format!("so_keepalive={v}: expected on, off or idle:interval:count")));
        };
        let mut fields = Vec::new();
        let mut left = Vec::new();
        for (key, raw) in [("idle", idle), ("interval", interval)] {
            if raw.is_empty() {
                left.push(key);
                continue;
            }
            let t = parse_format_duration(raw).map_err(|e| d.err(format!("so_keepalive={v}: {e}")))?;
            fields.push(format!("{key} = {}", toml::Value::String(crate::config::format_duration(t))));
        }
        if count.is_empty() {
            left.push("count");
        } else {
            let n: u32 = count.parse().map_err(|_| d.err(format!("so_keepalive={v}: expected a whole count")))?;
            fields.push(format!("count = {n}"));
        }
        if !left.is_empty() {
            notes.push(format!("nginx: so_keepalive={v}  ({}): for {}, {kernel}", d.at(), left.join(" and ")));
        }
        Ok(format!("{{ {} }}", fields.join(", ")))
    }
}
