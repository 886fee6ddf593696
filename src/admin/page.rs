//! The HTML status page at `GET /`: everything `/status` says, for a person.
//!
//! Rendered on the server from the same data as `/status`, with no script
//! and no external asset (the admin port may be reached through a tunnel with
//! nothing else), refreshing itself every 2 s, and laid out so a phone can
//! read it (tables scroll sideways inside their own box).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::status::{ServerStatus, View};

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
.badge.bad{background:#fde7e6}.badge.ok{background:#e3f5e9}.badge.warn{background:#fff3d6}";

fn class_of(ok: bool) -> &'static str {
    if ok { "ok" } else { "bad" }
}

fn server_row(out: &mut String, pool: &str, s: &ServerStatus, now: i64) {
    let state_class = match s.state {
        "up" => "ok",
        "drain" => "warn",
        _ => "bad",
    };
    let (check, check_class, reason) = match &s.check {
        None => ("none".to_owned(), "", String::new()),
        Some(c) => (c.state.to_owned(), class_of(c.state == "up"), c.reason.clone().unwrap_or_default()),
    };
    let passive = if s.ejected {
        format!("<span class=bad>ejected</span> ({} fails)", s.fails)
    } else if s.fails > 0 {
        format!("{} fails", s.fails)
    } else {
        "ok".to_owned()
    };
    let cert = s
        .check
        .as_ref()
        .and_then(|c| c.cert_not_after)
        .map(|t| {
            let days = (t - now) / 86400;
            let class = if days < 14 { "bad" } else { "" };
            format!("<span class='{class}'>{days} d</span>")
        })
        .unwrap_or_else(|| "–".to_owned());
    let role = if s.backup { " (backup)" } else { "" };
    let addr = s.addr.to_string();
    // The address under the name, unless the name is the address.
    let addr_line =
        if s.name == addr { String::new() } else { format!("<br><span class=meta>{}</span>", escape(&addr)) };
    // The reason sits under the check state, where a phone still shows it.
    let reason = if reason.is_empty() { reason } else { format!("<br><span class=reason>{}</span>", escape(&reason)) };
    let _ = write!(
        out,
        "<tr class=server data-pool=\"{pool}\" data-addr=\"{addr}\"><td>{name}{role}{addr_line}</td>\
         <td class='check {check_class}'>{check}{reason}</td><td class='state {state_class}'>{state}</td>\
         <td class='eligible {el}'>{eligible}</td><td class=passive>{passive}</td>\
         <td>{active}</td><td>{conns}</td><td>{sent} / {recv}</td><td class=cert>{cert}</td></tr>",
        pool = escape(pool),
        addr = escape(&addr),
        name = escape(&s.name),
        state = escape(s.state),
        el = class_of(s.eligible),
        eligible = if s.eligible { "yes" } else { "no" },
        check = escape(&check),
        active = s.active,
        conns = s.connections,
        sent = bytes(s.bytes_sent),
        recv = bytes(s.bytes_received),
    );
}

/// The page of `view`.
pub fn render(h: &View) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content='width=device-width,initial-scale=1'>\
         <meta http-equiv=refresh content=2><title>ucp-lb status</title><style>{STYLE}</style></head><body>"
    );
    let (health, health_class) = if h.shutting_down {
        ("shutting down", "bad")
    } else if h.ready && h.pools.iter().any(|p| p.all_down) {
        ("serving, a pool has no server", "bad")
    } else if h.ready {
        ("serving", "ok")
    } else {
        ("starting", "warn")
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
         <div class=meta>version {ver} · config {src} · generation {gen} · reloads {ok} ok, {bad} failed</div>\
         <div class=meta id=reload>{reload}</div>",
        ver = escape(h.version),
        src = escape(&h.config_source),
        gen = h.generation,
        ok = h.reload.successes,
        bad = h.reload.failures,
    );
    out.push_str("<h2>Listeners</h2><div class=box><table><tr><th>address</th><th>pool</th><th>open</th><th>accepted</th><th>closed at once</th></tr>");
    for l in &h.listeners {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&l.local.to_string()),
            escape(l.pool.as_deref().unwrap_or("")),
            l.active,
            l.accepted,
            l.rejected_max_connections + l.rejected_fd_limit + l.rejected_no_pool
        );
    }
    out.push_str("</table></div>");
    for p in &h.pools {
        let badge = if p.fail_open {
            " <span class='badge bad all-down'>no server eligible: failing open</span>"
        } else if p.rejecting {
            " <span class='badge bad all-down'>no server eligible: closing new clients</span>"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<h2>Pool {}{badge}</h2><div class=box><table><tr><th>server</th><th>check</th><th>state</th><th>eligible</th>\
             <th>passive</th><th>open</th><th>connections</th><th>sent / received</th><th>cert</th></tr>",
            escape(&p.name)
        );
        for s in &p.servers {
            server_row(&mut out, &p.name, s, now);
        }
        out.push_str("</table></div>");
    }
    out.push_str("<p class=meta>Refreshes every 2 s. JSON: <a href=/status>/status</a> · Prometheus: <a href=/metrics>/metrics</a></p></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }
}
