//! Writing the converted pools and listeners as lb.toml, with comments
//! for what was not carried over and for nginx defaults that are traps.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::format_duration;

use super::convert::*;

pub(super) fn write(c: &Converter, path: &Path, outside: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Converted by `ucp-lb convert-nginx` from {}.", path.display());
    o.push_str(
        "# nginx's defaults are written out where they differ from ucp-lb's, so this\n\
         # config routes and ejects servers as nginx did. nginx has no active health\n\
         # checks: see the commented [pool.*.health] tables to add them.\n",
    );
    if !outside.is_empty() {
        let _ = writeln!(o, "# Outside stream {{}} and ignored: {}.", outside.join(", "));
    }
    if !c.head_notes.is_empty() {
        o.push('\n');
        comment_lines(&mut o, "", &c.head_notes);
    }
    for l in &c.listeners {
        o.push('\n');
        comment_lines(&mut o, "", &l.comments);
        comment_lines(&mut o, "", &l.notes);
        let _ = writeln!(o, "[[listener]]\nbind = {}\npool = {}", q(&l.bind), q(&l.pool));
    }
    for p in &c.pools {
        o.push('\n');
        comment_lines(&mut o, "", &p.comments);
        let _ = writeln!(o, "# nginx upstream {} ({})", p.origin, p.at);
        comment_lines(&mut o, "", &p.notes);
        let _ = writeln!(o, "[pool.{}]", p.name);
        let proxy = p.proxy.clone().unwrap_or_default();
        let _ = writeln!(o, "balance = {}", q(p.balance));
        let ct = proxy.connect_timeout.unwrap_or(NGINX_CONNECT_TIMEOUT);
        let _ = writeln!(o, "connect_timeout = {}{}", q(&nonzero(ct)), default_note(proxy.connect_timeout.is_none()));
        match proxy.idle_timeout.unwrap_or(Some(NGINX_PROXY_TIMEOUT)) {
            Some(t) => {
                let _ = writeln!(
                    o,
                    "idle_timeout = {}{}",
                    q(&format_duration(t)),
                    default_note(proxy.idle_timeout.is_none())
                );
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
        let (mf, ft) =
            p.servers.first().map_or((NGINX_MAX_FAILS, NGINX_FAIL_TIMEOUT), |s| (s.max_fails, s.fail_timeout));
        let _ = writeln!(o, "max_fails = {mf}");
        let _ = writeln!(o, "fail_timeout = {}", q(&nonzero(ft)));
        let _ = writeln!(
            o,
            "retries = {}{}",
            proxy.retries(),
            default_note(proxy.next_upstream.is_none() && proxy.tries.is_none())
        );
        o.push_str("all_down = \"reject\"  # nginx: \"no live upstreams\" closes the client\n");
        if p.proxy.is_none() {
            o.push_str("# (no nginx server {} proxies to this upstream)\n");
        }
        o.push_str("servers = [\n");
        for s in &p.servers {
            comment_lines(&mut o, "  ", &s.comments);
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
        // nginx never probed; show how, for the ports of UCP and DTR.
        let port = p.servers.first().and_then(|s| s.address.rsplit(':').next()).unwrap_or("");
        let _ = writeln!(o, "# [pool.{}.health]", p.name);
        match port {
            "443" | "6443" => o.push_str("# kind = \"https\"\n# path = \"/_ping\"\n"),
            "80" => o.push_str("# kind = \"https\"\n# path = \"/_ping\"\n# port = 443\n"),
            _ => o.push_str("# kind = \"tcp\"\n"),
        }
    }
    o
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
