//! Writing the converted pools and listeners as lb.toml, with comments
//! for what was not carried over and for nginx defaults that are traps.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::format_duration;

use super::convert::*;

/// The lb.toml for what `c` converted from `path`; `outside` names the
/// directives outside `stream {}`, ignored.
pub(super) fn write(c: &Converter, path: &Path, outside: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Converted by `ucp-lb convert-nginx` from {}.", path.display());
    o.push_str(if c.pools.iter().any(|p| p.health.is_some()) {
        "# nginx's defaults are written out where they differ from ucp-lb's, so this\n\
         # config routes and ejects servers as nginx did. nginx Plus health_check is\n\
         # carried as [pool.*.health]; the other pools have commented tables.\n"
    } else {
        "# nginx's defaults are written out where they differ from ucp-lb's, so this\n\
         # config routes and ejects servers as nginx did. nginx has no active health\n\
         # checks: see the commented [pool.*.health] tables to add them.\n"
    });
    o.push_str(
        "# One deliberate difference: a half-close (a FIN from one side) is passed\n\
         # on while the other side goes on sending; nginx ends the session at the\n\
         # first FIN unless proxy_half_close is on.\n",
    );
    if !c.lost.is_empty() {
        o.push_str("#\n# MISSING: listeners of the nginx config that are not carried over (an error each):\n");
        for l in &c.lost {
            let _ = writeln!(o, "#   {l}");
        }
    }
    if !outside.is_empty() {
        let _ = writeln!(o, "# Outside stream {{}} and ignored: {}.", outside.join(", "));
    }
    // nginx closes its listeners at once on a stop: so does this config.
    o.push_str("\n[defaults]\nstop_grace = \"0\"  # nginx stops accepting at once; in a keepalived pair set it above interval x fall\n");
    if let Some(t) = &c.resolve_interval {
        let _ = writeln!(o, "resolve_interval = {}  # nginx resolver valid=", q(t));
    }
    if !c.head_notes.is_empty() {
        o.push('\n');
        comment_lines(&mut o, "", &c.head_notes);
    }
    let shared = super::admission::shared_limits(&c.listeners);
    for l in &c.listeners {
        listener(&mut o, l, &shared);
    }
    for p in &c.pools {
        pool(&mut o, p, &c.pools);
    }
    for (zone, n) in &shared {
        let _ = writeln!(
            o,
            "\n# nginx limit_conn_zone {zone} on $binary_remote_addr: one count per client across its listeners\n\
             [limit.{zone}]\nmax_connections_per_client = {n}  # nginx limit_conn {zone} {n} (the first server's)"
        );
    }
    o
}

/// A `[[listener]]` table, with its comments and notes first.
fn listener(o: &mut String, l: &Listener, shared: &std::collections::BTreeMap<String, u32>) {
    o.push('\n');
    comment_lines(o, "", &l.comments);
    comment_lines(o, "", &l.notes);
    let _ = writeln!(o, "[[listener]]\nbind = {}", q(&l.bind));
    match &l.pool {
        Some(p) => {
            let _ = writeln!(o, "pool = {}", q(p));
        }
        None => o.push_str("# no pool: the map has no default, so clients no route takes are closed (as in nginx)\n"),
    }
    if !l.routes.is_empty() {
        let routes: Vec<String> = l.routes.iter().map(|(n, p)| format!("{} = {}", q(n), q(p))).collect();
        let _ = writeln!(o, "routes = {{ {} }}", routes.join(", "));
        // nginx's preread_timeout default is 30s; ucp-lb's 5s.
        let t = l.preread_timeout.clone().unwrap_or_else(|| "30s".to_owned());
        let _ = writeln!(o, "preread_timeout = {}", q(&t));
    }
    if l.proxy_protocol {
        proxy_protocol(o, l);
    }
    if !l.access.is_empty() {
        let rules: Vec<String> = l.access.iter().map(|r| q(r)).collect();
        let _ = writeln!(o, "access = [{}]  # nginx allow/deny, first match decides", rules.join(", "));
    }
    if let Some(k) = &l.keepalive {
        let _ = writeln!(o, "client_keepalive = {k}  # nginx listen so_keepalive=");
    }
    match (l.zones.first(), l.per_client) {
        (Some((zone, n)), _) if shared.contains_key(zone) => {
            let _ = writeln!(
                o,
                "limit = {}  # nginx limit_conn {zone}, shared with the other listeners naming it",
                q(zone)
            );
            if shared.get(zone) != Some(n) {
                let _ = writeln!(
                    o,
                    "max_connections_per_client = {n}  # nginx limit_conn {zone} {n}: this listener's number over the shared counts"
                );
            }
        }
        (_, Some(n)) => {
            let _ = writeln!(
                o,
                "max_connections_per_client = {n}  # nginx limit_conn on $binary_remote_addr (counted in this listener only)"
            );
        }
        (_, None) => {}
    }
    match &l.access_log {
        None => {}
        Some(AccessLog::Off) => o.push_str("access_log = \"off\"\n"),
        Some(AccessLog::To { path, template }) => {
            let _ = writeln!(o, "access_log = {}", q(path));
            // nginx's stream access_log always names a format; without
            // one it logs nothing useful, and ucp-lb's text is close.
            if let Some(t) = template {
                let _ = writeln!(o, "access_log_format = {}", q(t));
            }
        }
    }
}

/// A PROXY listener's keys: the header required, whose address is
/// believed, and how long it may take.
fn proxy_protocol(o: &mut String, l: &Listener) {
    o.push_str(
        "proxy_protocol = true  # nginx listen ... proxy_protocol: every client sends a PROXY header first
",
    );
    if l.real_ip_from.is_empty() {
        o.push_str(
            "# no set_real_ip_from: the header's address is not believed, as in nginx ($remote_addr stays the
             # connecting address; $proxy_protocol_addr has the header's)
",
        );
    } else {
        let from: Vec<String> = l.real_ip_from.iter().map(|a| q(a)).collect();
        let _ = writeln!(o, "real_ip_from = [{}]  # nginx set_real_ip_from", from.join(", "));
    }
    match &l.proxy_protocol_timeout {
        Some(t) => {
            let _ = writeln!(o, "proxy_protocol_timeout = {}", q(t));
        }
        None => {
            let _ = writeln!(o, "proxy_protocol_timeout = {}{}", q(NGINX_PROXY_PROTOCOL_TIMEOUT), default_note(true));
        }
    }
}

/// A `[pool.NAME]` table, with nginx's defaults written out, and its
/// health table commented out.
fn pool(o: &mut String, p: &Pool, all: &[Pool]) {
    o.push('\n');
    comment_lines(o, "", &p.comments);
    let _ = writeln!(o, "# nginx upstream {} ({})", p.origin, p.at);
    comment_lines(o, "", &p.notes);
    let _ = writeln!(o, "[pool.{}]", p.name);
    let proxy = p.proxy.clone().unwrap_or_default();
    let _ = writeln!(o, "balance = {}", q(p.balance));
    let ct = proxy.connect_timeout.unwrap_or(NGINX_CONNECT_TIMEOUT);
    let _ = writeln!(o, "connect_timeout = {}{}", q(&nonzero(ct)), default_note(proxy.connect_timeout.is_none()));
    match proxy.idle_timeout.unwrap_or(Some(NGINX_PROXY_TIMEOUT)) {
        Some(t) => {
            let _ =
                writeln!(o, "idle_timeout = {}{}", q(&format_duration(t)), default_note(proxy.idle_timeout.is_none()));
            o.push_str(
                "# ^ nginx's proxy_timeout. A known trap: connections quiet this long are\n\
                 #   cut, which breaks `docker events`, `kubectl --watch` and slow pushes.\n\
                 #   Docker asks for more than 10m, or \"none\".\n",
            );
        }
        None => {
            let _ = writeln!(o, "idle_timeout = \"none\"");
        }
    }
    let (mf, ft) = p.servers.first().map_or((NGINX_MAX_FAILS, NGINX_FAIL_TIMEOUT), |s| (s.max_fails, s.fail_timeout));
    let _ = writeln!(o, "max_fails = {mf}");
    let _ = writeln!(o, "fail_timeout = {}", q(&nonzero(ft)));
    let _ = writeln!(
        o,
        "retries = {}{}",
        proxy.retries(),
        default_note(proxy.next_upstream.is_none() && proxy.tries.is_none())
    );
    o.push_str("all_down = \"reject\"  # nginx: \"no live upstreams\" closes the client\n");
    match proxy.socket_keepalive {
        Some(true) => o.push_str(
            "server_keepalive = true  # nginx proxy_socket_keepalive on (nginx: the kernel's timings, 7200 s by default; here 60 s, 10 s, 6)\n",
        ),
        Some(false) => o.push_str("server_keepalive = false  # nginx proxy_socket_keepalive off\n"),
        None => {}
    }
    if proxy.send_proxy_protocol == Some(true) {
        // nginx's `proxy_protocol on` sends v1, the only version it sends.
        o.push_str("send_proxy_protocol = \"v1\"  # nginx proxy_protocol on\n");
    }
    if p.proxy.is_none() {
        o.push_str("# (no nginx server {} proxies to this upstream)\n");
    }
    servers(o, p);
    if let Some((body, at)) = &p.health {
        let _ = writeln!(o, "\n# nginx health_check ({at})\n[pool.{}.health]", p.name);
        o.push_str(body);
        return;
    }
    // nginx never probed; suggest how, such that uncommenting it can
    // never take every server out.
    let _ = writeln!(o, "# [pool.{}.health]", p.name);
    o.push_str(&health_advice(p, all));
}

/// The `servers` list of pool `p`.
fn servers(o: &mut String, p: &Pool) {
    o.push_str("servers = [\n");
    for s in &p.servers {
        comment_lines(o, "  ", &s.comments);
        if !s.dropped.is_empty() {
            let _ = writeln!(o, "  # nginx parameters not carried over: {}", s.dropped.join(" "));
        }
        let mut extra = Vec::new();
        if s.weight != 1 {
            extra.push(format!("weight = {}", s.weight));
        }
        if s.backup {
            extra.push("backup = true".into());
        }
        if let Some(t) = s.slow_start {
            extra.push(format!("slow_start = {}", q(&format_duration(t))));
        }
        if s.max_conns > 0 {
            extra.push(format!("max_conns = {}", s.max_conns));
        }
        if s.down {
            extra.push("state = \"down\"".into());
        }
        if extra.is_empty() {
            let _ = writeln!(o, "  {},", q(&s.address));
        } else {
            let _ = writeln!(o, "  {{ address = {}, {} }},", q(&s.address), extra.join(", "));
        }
    }
    o.push_str("]\n");
}

pub(super) fn nonzero(d: Duration) -> String {
    // lb.toml reads "0" as "switched off": nginx's 0 means "at once".
    if d.is_zero() { "1ms".into() } else { format_duration(d) }
}

pub(super) fn default_note(is_default: bool) -> &'static str {
    if is_default { "  # nginx's default" } else { "" }
}

/// A TOML basic string.
pub(super) fn q(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04X}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub(super) fn comment_lines(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        for part in l.lines() {
            let part = part.trim_end();
            if part.is_empty() {
                let _ = writeln!(out, "{indent}#");
            } else if part.starts_with([' ', '#']) {
                let _ = writeln!(out, "{indent}#{part}");
            } else {
                let _ = writeln!(out, "{indent}# {part}");
            }
        }
    }
}

/// The hosts of a pool (addresses without their port) and its port.
fn hosts_and_port(p: &Pool) -> (Vec<&str>, &str) {
    let mut hosts: Vec<&str> = p.servers.iter().filter_map(|s| s.address.rsplit_once(':').map(|(h, _)| h)).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let port = p.servers.first().and_then(|s| s.address.rsplit_once(':')).map_or("", |(_, port)| port);
    (hosts, port)
}

/// A commented `[pool.X.health]` body for `p`, from what the Docker
/// reference architectures put on which port of the same hosts: UCP
/// publishes 443 (with `/_ping`) and 6443 (the Kubernetes API, which has no
/// `/_ping` of its own); DTR publishes 80 and 443, and its `/_ping` answers
/// JSON with `"Healthy"` (503 when unhealthy). Anything else gets a TCP
/// check, which any server passes while it accepts connections.
pub(super) fn health_advice(p: &Pool, all: &[Pool]) -> String {
    let (hosts, port) = hosts_and_port(p);
    let sibling = |want: &str| {
        all.iter().any(|o| {
            let (h, port) = hosts_and_port(o);
            port == want && h == hosts
        })
    };
    let name = p.name.to_ascii_lowercase();
    let dtr_named = name.contains("dtr") || name.contains("msr");
    let dtr = "# kind = \"https\"\n# path = \"/_ping\"\n# expect_json = { Healthy = true }\n";
    match port {
        "6443" if sibling("443") => "# kind = \"https\"\n# path = \"/_ping\"\n# port = 443\n\
             # ^ UCP answers /_ping on 443; its Kubernetes API on 6443 has none: this pool follows 443.\n"
            .into(),
        "443" if sibling("80") || dtr_named => {
            format!("{dtr}# ^ DTR: /_ping answers {{\"Healthy\": false}} (503) when a replica is unhealthy.\n")
        }
        "80" if sibling("443") || dtr_named => {
            format!("{dtr}# port = 443\n# ^ DTR: /_ping is served over HTTPS on 443; this pool on 80 follows it.\n")
        }
        "443" => {
            "# kind = \"https\"\n# path = \"/_ping\"\n# ^ UCP (and DTR) answer GET /_ping with 200 while healthy.\n"
                .into()
        }
        _ => format!(
            "# kind = \"tcp\"\n# ^ port {port} is not one of UCP's or DTR's: a TCP connect check. An HTTP check needs a\n\
             #   path this server answers with 200 (a plain Kubernetes API server answers /_ping with 401 or 404).\n"
        ),
    }
}
