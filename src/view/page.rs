//! The HTML status page at `GET /`: everything `/status` says, for a person.
//!
//! Rendered on the server from the same data as `/status`, with no script
//! and no external asset (the admin port may be reached through a tunnel with
//! nothing else), refreshing itself every 2 s, and laid out so a phone can
//! read it (tables scroll sideways inside their own box).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::events::history::Event;
use crate::view::{ListenerStatus, PoolStatus, ServerStatus, View};

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1b1f24}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:18px 0 6px}.meta{color:#555;font-size:13px}\
.box{overflow-x:auto;background:#fff;border:1px solid #d8dde3;border-radius:6px}\
table{border-collapse:collapse;width:100%;min-width:640px}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eceff2;white-space:nowrap}\
th{font-size:12px;text-transform:uppercase;color:#555;background:#fafbfc}.reason{white-space:normal;font-weight:400;color:#b3261e;font-size:13px}\
.ok{color:#0a7a2f;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00;font-weight:600}\
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;font-weight:600}\
.badge.bad{background:#fde7e6}.badge a{color:inherit}.badge.ok{background:#e3f5e9}.badge.warn{background:#fff3d6}.badge.prefer{background:#e8eefc}\
.details{white-space:normal;font-size:13px;color:#444}svg.traffic{display:block;width:100%;height:90px;background:#fff;border-bottom:1px solid #eceff2}\
.legend{display:flex;gap:12px;padding:4px 8px 0;font-size:11px}.legend .open{color:#1f5fbf}.legend .rate{color:#0a7a2f}\
.legend .span{margin-left:auto;color:#555}.box>svg.traffic,.box>.legend{position:sticky;left:0}";

/// `HH:MM:SS` (UTC) of Unix seconds: when something happened today.
fn clock(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// The process: its pid and start, whom it took over from, and while that
/// one drains, what it still holds.
fn process_line(p: &crate::view::ProcessStatus) -> String {
    let (y, mo, d, hh, mm, ss) = crate::civil::civil(p.started_at as i64);
    let mut line = format!("pid {} · started {y}-{mo:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC", p.pid);
    if let Some(from) = p.took_over_from {
        line.push_str(&format!(" · took over from pid {from} ({} connections moved here", p.moved_in));
        if p.previous_cut > 0 {
            line.push_str(&format!(", <span class=bad>{} cut</span>", p.previous_cut));
        }
        line.push(')');
    }
    if p.previous_draining {
        line.push_str(&format!(
            " · <span class=warn>pid {} still drains {} connections</span>",
            p.took_over_from.unwrap_or(0),
            p.previous_holds
        ));
    }
    if let Some(to) = p.handing_over_to {
        line.push_str(&format!(" · <span class=warn>handing over to pid {to}</span>"));
    }
    if p.upgrades_resumed > 0 {
        line.push_str(&format!(
            " · <span class=bad>{} upgrade(s) broke off after go: resumed here ({} connections lost)</span>",
            p.upgrades_resumed, p.lost_in_resumed
        ));
    }
    line
}

fn server_row(out: &mut String, pool: &str, s: &ServerStatus, now: i64) {
    let class = if s.phrase.starts_with("in") {
        "ok"
    } else if ["draining", "drained", "full", "waiting", "warming"].iter().any(|p| s.phrase.starts_with(p)) {
        "warn"
    } else {
        "bad"
    };
    // The details beside the phrase: the check, passive ejection, the
    // admin state, and when the state last changed.
    let mut details = Vec::new();
    match &s.check {
        None => details.push("no active check".to_owned()),
        Some(c) => {
            let since = c.since.map(|t| format!(" since {} UTC", clock(t as f64))).unwrap_or_default();
            let why = c.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            details.push(format!("check {}{since}{why}", c.state));
        }
    }
    if let Some(w) = &s.warming {
        let conns = if w.max_conns_now > 0 { format!(", max_conns {}", w.max_conns_now) } else { String::new() };
        details.push(format!(
            "slow start: weight {:.2} of {}{conns}, full in {} s",
            w.weight_now,
            s.weight,
            w.left_ms.div_ceil(1000)
        ));
    }
    if s.closing_sessions {
        details.push(format!("closing its {} open sessions (on_server_down)", s.active));
    }
    if s.sessions_closed > 0 {
        details.push(format!("{} sessions closed when it went down", s.sessions_closed));
    }
    if s.ejected {
        details.push(format!("ejected ({} failed connects)", s.fails));
    } else if s.fails > 0 {
        details.push(format!("{} failed connects", s.fails));
    }
    // The swarm's say, an admin's override and lb.toml's state, each as
    // such: an override wins, and the row says over what.
    let since = s.changed_at.map(|t| format!(" since {} UTC", clock(t as f64))).unwrap_or_default();
    match (s.swarm, s.admin_override) {
        (Some(sw @ ("drain" | "down")), Some(_)) => details.push(format!("from the swarm, which says {sw}")),
        (Some(_), _) => details.push("from the swarm".to_owned()),
        (None, None) if s.state != "up" => details.push(format!("set {} in lb.toml{since}", s.state)),
        (None, _) => {}
    }
    if let Some(o) = s.admin_override {
        details.push(format!("admin override: {o}{since} (POST …/follow to clear)"));
    }
    let cert = s.check.as_ref().and_then(|c| c.cert_not_after).map_or_else(|| "–".to_owned(), |t| cert_left(t, now));
    let role = match (s.backup, s.preferred) {
        (true, _) => " (backup)",
        (false, Some(true)) => " (preferred)",
        (false, Some(false)) => " (backup: not preferred)",
        (false, None) => "",
    };
    let addr = s.addr.to_string();
    // The address under the name, unless the name is the address; then
    // its labels (a swarm node's, or lb.toml's).
    let mut addr_line =
        if s.name == addr { String::new() } else { format!("<br><span class=meta>{}</span>", escape(&addr)) };
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(addr_line, "<br><span class='meta labels'>{}</span>", escape(&labels.join(" ")));
    }
    let _ = write!(
        out,
        "<tr class=server data-pool=\"{pool}\" data-addr=\"{addr}\" data-eligible=\"{eligible}\" data-source={source}><td>{name}{role}{addr_line}</td>\
         <td class='state {class}'>{phrase}</td><td class=details>{details}</td>\
         <td>{active}</td><td>{conns}</td><td>{sent} / {recv}</td><td class=cert>{cert}</td></tr>",
        pool = escape(pool),
        addr = escape(&addr),
        eligible = s.eligible,
        source = s.source,
        name = escape(&s.name),
        phrase = escape(&s.phrase),
        details = escape(&details.join(" · ")),
        active = s.active,
        conns = s.connections,
        sent = bytes(s.bytes_sent),
        recv = bytes(s.bytes_received),
    );
}

/// How long a certificate with notAfter `not_after` (Unix seconds) has left
/// at `now`: days, red under 14; a notAfter more than ten years away (rcgen's
/// default of 4096-01-01, as the demo's throw-away certificates have) reads
/// "> 10 y", and the date is in the cell's title.
fn cert_left(not_after: i64, now: i64) -> String {
    let days = (not_after - now).div_euclid(86_400);
    let (y, mo, d, ..) = crate::civil::civil(not_after);
    let title = format!("notAfter {y}-{mo:02}-{d:02}");
    if days > 3650 {
        return format!("<span title='{title}'>&gt; 10 y</span>");
    }
    let class = if days < 14 { "bad" } else { "" };
    format!("<span class='{class}' title='{title}'>{days} d</span>")
}

/// Open connections (blue) and new connections per second (green) of one
/// pool over the last 15 minutes, with its state changes marked (red), as
/// inline SVG: no script, nothing loaded.
fn traffic_svg(pool: &PoolStatus, events: &[Event], now: f64) -> String {
    const W: f64 = 600.0;
    const H: f64 = 90.0;
    let window = (crate::events::history::SAMPLES as u64 * crate::events::history::SAMPLE_EVERY.as_secs()) as f64;
    let x = |t: f64| ((t - (now - window)) / window * W).clamp(0.0, W);
    let s = &pool.traffic;
    let rates: Vec<(f64, f64)> = s
        .windows(2)
        .map(|w| (w[1].at, (w[1].total.saturating_sub(w[0].total)) as f64 / (w[1].at - w[0].at).max(1.0)))
        .collect();
    let open_max = s.iter().map(|p| p.open).max().unwrap_or(0).max(1) as f64;
    let rate_max = rates.iter().map(|r| r.1).fold(0.0, f64::max).max(1.0);
    let line = |pts: Vec<(f64, f64)>, max: f64| {
        pts.iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), H - 4.0 - v / max * (H - 14.0)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The legend is HTML above the picture, so the picture can stretch to
    // its box's width (preserveAspectRatio none, strokes kept at 1.5 px)
    // without stretching the text.
    let mut o = format!(
        "<div class=legend><span class=open>open (max {open_max:.0})</span> \
         <span class=rate>new/s (max {rate_max:.1})</span><span class=span>15 min to now</span></div>\
         <svg class=traffic data-pool=\"{}\" viewBox='0 0 {W} {H}' preserveAspectRatio=none role=img \
         aria-label='open and new connections of pool {}, last 15 minutes'>",
        escape(&pool.name),
        escape(&pool.name)
    );
    let of_pool = |e: &&Event| e.pool.as_deref().is_none_or(|p| p.split(", ").any(|p| p == pool.name));
    for e in events.iter().filter(|e| e.at >= now - window).filter(of_pool) {
        let ex = x(e.at);
        let _ = write!(
            o,
            "<line class=event x1='{ex:.1}' x2='{ex:.1}' y1='0' y2='{H}' stroke='#b3261e' stroke-dasharray='3,2' \
             vector-effect=non-scaling-stroke><title>{} {}</title></line>",
            clock(e.at),
            escape(e.what)
        );
    }
    let open: Vec<(f64, f64)> = s.iter().map(|p| (p.at, p.open as f64)).collect();
    let _ = write!(
        o,
        "<polyline class=open fill='none' stroke='#1f5fbf' stroke-width='1.5' vector-effect=non-scaling-stroke points='{}'/>\
         <polyline class=rate fill='none' stroke='#0a7a2f' stroke-width='1.5' vector-effect=non-scaling-stroke points='{}'/></svg>",
        line(open, open_max),
        line(rates, rate_max),
    );
    o
}

/// The page of `view`.
pub fn render(h: &View) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut out = String::with_capacity(16384);
    header(&mut out, h);
    listeners(&mut out, &h.listeners);
    access_log(&mut out, &h.access_log);
    let wall = crate::events::history::now();
    for p in &h.pools {
        pool(&mut out, p, &h.events, wall, now);
    }
    events(&mut out, &h.events);
    out.push_str("<p class=meta>Refreshes every 2 s. JSON: <a href=/status>/status</a> · Prometheus: <a href=/metrics>/metrics</a></p></body></html>");
    out
}

/// The document's head, then the balancer's state: serving or not, the
/// version and config, the last reload, the process.
fn header(out: &mut String, h: &View) {
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content='width=device-width,initial-scale=1'>\
         <meta http-equiv=refresh content=2><title>ucp-lb status</title><style>{STYLE}</style></head><body>"
    );
    // The pools with no server, named and linked to their section: the
    // badge is the first thing seen, the pool may be below the fold.
    let down: Vec<String> = h
        .pools
        .iter()
        .filter(|p| p.all_down)
        .map(|p| format!("<a href='#{id}'>{name}</a>", id = pool_id(&p.name), name = escape(&p.name)))
        .collect();
    let (health, health_class) = if h.shutting_down {
        ("shutting down".to_owned(), "bad")
    } else if h.stopping {
        ("stopping: still accepting".to_owned(), "warn")
    } else if h.ready && down.len() == 1 {
        (format!("serving, pool {} has no server", down[0]), "bad")
    } else if h.ready && !down.is_empty() {
        (format!("serving, pools {} have no server", down.join(", ")), "bad")
    } else if h.ready {
        ("serving".to_owned(), "ok")
    } else {
        ("starting".to_owned(), "warn")
    };
    let reload = match (h.reload.last_ok, &h.reload.last_error) {
        (None, _) => "no reload yet".to_owned(),
        (Some(true), _) => "<span class=ok>last reload ok</span>".to_owned(),
        (Some(false), e) => {
            format!("<span class=bad>last reload failed:</span> {}", escape(e.as_deref().unwrap_or("")))
        }
    };
    let _ = write!(
        out,
        "<h1>ucp-lb <span class='badge {health_class}' id=health>{health}</span></h1>\
         <div class=meta>version {ver} (commit {commit}) · config {src} · generation {gen} · reloads {ok} ok, {bad} failed</div>\
         <div class=meta id=reload>{reload}</div>\
         <div class=meta id=process>{process}</div>{cluster}",
        process = process_line(&h.process),
        cluster = cluster_line(h.cluster.as_ref()),
        ver = escape(h.version),
        commit = escape(h.build.commit),
        src = escape(&h.config_source),
        gen = h.generation,
        ok = h.reload.successes,
        bad = h.reload.failures,
    );
}

/// The swarm's node list: where from, how old, the last error.
fn cluster_line(c: Option<&crate::view::cluster::ClusterStatus>) -> String {
    let Some(c) = c else { return String::new() };
    let failed: u64 = c.failures.values().sum();
    let list = match (c.age_s, &c.endpoint) {
        (Some(age), Some(e)) => format!("{} nodes read from {} {age} s ago", c.nodes, escape(e)),
        _ => format!("<span class=bad>no node list read yet</span> ({} s)", c.never_read_s.unwrap_or(0)),
    };
    let error = match &c.last_error {
        Some(e) => format!(" · <span class=bad>last read failed, the last good list stays:</span> {}", escape(e)),
        None => String::new(),
    };
    format!("<div class=meta id=cluster>swarm: {list} · {failed} failed reads{error}</div>")
}

/// The anchor of a pool's section (`#pool-NAME`), which the header's badge
/// links to.
fn pool_id(name: &str) -> String {
    format!("pool-{}", escape(name))
}

/// The listeners' table, each followed by its routes.
fn listeners(out: &mut String, listeners: &[ListenerStatus]) {
    out.push_str("<h2>Listeners</h2><div class=box><table><tr><th>address</th><th>pool</th><th>open</th><th>accepted</th><th>closed at once</th><th>who may connect</th><th>per client</th></tr>");
    for l in listeners {
        let removed = if l.removed { " (removed, draining)" } else { "" };
        let _ = write!(
            out,
            "<tr><td>{}{removed}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&l.local.to_string()),
            escape(l.pool.as_deref().unwrap_or("")),
            l.active,
            l.accepted,
            escape(&refusals(l)),
            escape(&if l.access.is_empty() { "everyone".to_owned() } else { l.access.join(", ") }),
            escape(&per_client(l)),
        );
        if let Some(pp) = &l.proxy_protocol {
            let _ = write!(out, "<tr class=route><td colspan=7>&nbsp;&nbsp;{}</td></tr>", escape(&proxy_protocol(pp)));
        }
        for r in &l.routes {
            let name =
                if r.name.is_empty() { "(no route: the rest)".to_owned() } else { format!("TLS name {}", r.name) };
            let _ = write!(
                out,
                "<tr class=route><td>&nbsp;&nbsp;{}</td><td>{}</td><td></td><td>{}</td><td>{}</td><td></td><td></td></tr>",
                escape(&name),
                escape(r.pool.as_deref().unwrap_or("(closed)")),
                r.connections,
                r.refused
            );
        }
    }
    out.push_str("</table></div>");
}

/// The access log's destinations, when there are any: each one's state,
/// lines written and lost, and why it fails.
fn access_log(out: &mut String, a: &crate::view::AccessLogStatus) {
    if a.destinations.is_empty() {
        return;
    }
    out.push_str("<h2 id=access-log>Access log</h2><div class=box><table><tr><th>log</th><th>state</th><th>written</th><th>dropped</th><th>why</th></tr>");
    for d in &a.destinations {
        let class = match d.state {
            "ok" => "ok",
            "closed" => "warn",
            _ => "bad",
        };
        let lost: u64 = d.dropped_queue_full + d.lost.values().sum::<u64>();
        let why = match (&d.last_error, d.blocked_s) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) if d.state == "stalled" => format!("blocked in one write for {s:.0} s"),
            _ if d.dropped_queue_full > 0 => format!("{} dropped: its writer fell behind", d.dropped_queue_full),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td><span class={class}>{}</span></td><td>{}</td><td>{lost}</td><td class=reason>{}</td></tr>",
            escape(&d.log),
            d.state,
            d.written,
            escape(&why)
        );
    }
    out.push_str("</table></div>");
}

/// One pool: its heading (how many servers are eligible), its traffic
/// chart and its servers' table.
fn pool(out: &mut String, p: &PoolStatus, events: &[Event], wall: f64, now: i64) {
    let badge = if p.fail_open {
        " <span class='badge bad all-down'>no server eligible: failing open</span>"
    } else if p.rejecting {
        " <span class='badge bad all-down'>no server eligible: closing new clients</span>"
    } else {
        ""
    };
    let configured = p.servers.iter().filter(|s| !s.removed).count();
    let count_class = if p.eligible == configured {
        "ok"
    } else if p.eligible == 0 {
        "bad"
    } else {
        "warn"
    };
    let removed = if p.removed { " (removed by a reload)" } else { "" };
    let prefer = p.prefer.as_deref().map_or_else(String::new, |z| {
        format!(" <span class='badge prefer' title='the others take clients only when none of these is eligible'>prefers {}</span>", escape(z))
    });
    let _ = write!(
        out,
        "<h2 id='{id}'>Pool {name}{removed}{badge}{prefer} <span class='badge {count_class} eligible-count'>{e} of {n} eligible</span></h2>\
         <div class=box>{svg}<table><tr><th>server</th><th>state</th><th>details</th>\
         <th>open</th><th>connections</th><th>sent / received</th><th>cert</th></tr>",
        id = pool_id(&p.name),
        name = escape(&p.name),
        e = p.eligible,
        n = configured,
        svg = traffic_svg(p, events, wall),
    );
    for s in &p.servers {
        server_row(out, &p.name, s, now);
    }
    out.push_str("</table></div>");
}

/// The table of what happened (the event history).
fn events(out: &mut String, events: &[Event]) {
    out.push_str("<h2>What happened</h2><div class=box><table id=events><tr><th>time (UTC)</th><th>what</th><th>pool</th><th>server</th><th>why</th></tr>");
    if events.is_empty() {
        out.push_str("<tr><td colspan=5 class=meta>nothing since the start</td></tr>");
    }
    for e in events {
        let class = match e.what {
            "server up"
            | "readmitted"
            | "enable"
            | "reload"
            | "pool has a server again"
            | "took over"
            | "handed over"
            | "joined"
            | "active"
            | "cluster read" => "ok",
            "drain" | "drained" | "left" => "warn",
            _ => "bad",
        };
        let _ = write!(
            out,
            "<tr class=event><td>{}</td><td class={class}>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            clock(e.at),
            escape(e.what),
            escape(e.pool.as_deref().unwrap_or("")),
            escape(e.server.as_deref().unwrap_or("")),
            escape(&e.detail)
        );
    }
    out.push_str("</table></div>");
}

/// A listener's refusals: the total, and the reasons that have any.
fn refusals(l: &ListenerStatus) -> String {
    let reasons = l.refusals();
    let total: u64 = reasons.iter().map(|(_, n)| n).sum();
    let some: Vec<String> = reasons.iter().filter(|(_, n)| *n > 0).map(|(why, n)| format!("{why} {n}")).collect();
    if some.is_empty() { total.to_string() } else { format!("{total} ({})", some.join(", ")) }
}

/// A PROXY protocol listener's line: whom it believes, the headers it read
/// and the clients it closed for want of one.
fn proxy_protocol(pp: &crate::view::ProxyProtocolStatus) -> String {
    let trust = match (pp.on, pp.real_ip_from.is_empty()) {
        (false, _) => "PROXY protocol: off now".to_owned(),
        (true, true) => {
            "PROXY protocol: header required, no source trusted (clients keep their connecting address)".to_owned()
        }
        (true, false) => {
            format!("PROXY protocol: header required, address believed from {}", pp.real_ip_from.join(", "))
        }
    };
    let headers: Vec<String> =
        pp.headers.iter().filter(|h| h.count > 0).map(|h| format!("{} {} {}", h.version, h.command, h.count)).collect();
    let refused: Vec<String> = pp.refused.iter().filter(|r| *r.1 > 0).map(|(why, n)| format!("{why} {n}")).collect();
    let or_none = |v: Vec<String>| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    format!(
        "{trust}; headers: {}; refused: {}; not believed (source not trusted): {}",
        or_none(headers),
        or_none(refused),
        pp.untrusted
    )
}

/// A listener's per-client limits and how many clients it counts.
fn per_client(l: &ListenerStatus) -> String {
    let mut parts = Vec::new();
    if l.max_connections_per_client > 0 {
        parts.push(format!("{} open", l.max_connections_per_client));
    }
    if l.max_connection_rate_per_client > 0 {
        parts.push(format!("{} new/s", l.max_connection_rate_per_client));
    }
    if parts.is_empty() {
        return "no limit".to_owned();
    }
    format!("{}; {} clients now", parts.join(", "), l.clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
    }

    #[test]
    fn certificates_past_ten_years_read_as_such() {
        let now = 1_796_601_600; // 2026-12-07
        // rcgen's default notAfter, which the demo's certificates have: once "755711 d".
        assert_eq!(cert_left(67_090_118_400, now), "<span title='notAfter 4096-01-01'>&gt; 10 y</span>");
        assert_eq!(cert_left(now + 30 * 86_400, now), "<span class='' title='notAfter 2027-01-06'>30 d</span>");
        assert!(cert_left(now + 3 * 86_400, now).starts_with("<span class='bad'"));
        assert!(cert_left(now - 60, now).contains(">-1 d<"), "expired a minute ago");
    }

    #[test]
    fn a_proxy_protocol_listener_says_whom_it_believes_and_what_it_counted() {
        let mut pp = crate::view::ProxyProtocolStatus {
            on: true,
            real_ip_from: vec!["10.0.0.0/8".into()],
            timeout_ms: 5000,
            max_header: 4096,
            headers: vec![crate::view::HeaderCount { version: "v2", command: "proxy", count: 7 }],
            refused: [("missing", 2), ("timeout", 0)].into_iter().collect(),
            untrusted: 1,
        };
        assert_eq!(
            proxy_protocol(&pp),
            "PROXY protocol: header required, address believed from 10.0.0.0/8; headers: v2 proxy 7; refused: missing 2; not believed (source not trusted): 1"
        );
        pp.real_ip_from.clear();
        assert!(proxy_protocol(&pp).contains("no source trusted"));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }
}
