//! Values as lb.toml writes them: durations, `host:port`, and positions
//! in the text. Pure functions, shared by validation, `check`'s summary and
//! the nginx converter.

use std::time::Duration;

use super::{HostPort, Pos};

/// Byte offset to line and column (both from 1; columns count characters).
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        Pos { line, col }
    }
}

/// Parses `"500ms"`, `"5s"`, `"10m"`, `"1h"`, `"1d"`; `"0"` and `"none"` are
/// `Ok(None)` (switched off); a bare number is rejected, since a unit is easy
/// to forget and "30" could mean seconds or minutes.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    if t == "0" || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let expected = || format!(r#"expected a duration like "500ms", "5s", "10m" or "1h", found "{s}""#);
    if num.is_empty() {
        return Err(expected());
    }
    let value: f64 = num.parse().map_err(|_| expected())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => {
            return Err(format!(r#"expected a unit (ms, s, m, h or d) after the number, found "{s}""#));
        }
        _ => return Err(expected()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!(r#"duration "{s}" is longer than a year"#));
    }
    if secs == 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

/// Formats a duration the way lb.toml writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses an address to listen on, `v4:port` or `[v6]:port` (port 0: any
/// free port). An error says which part is wrong, after
/// `expected an IP address and port like EXAMPLE, found "TEXT"`.
pub fn parse_listen(s: &str, example: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let expected = format!("expected an IP address and port like {example}, found \"{s}\"");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("{expected}: missing ']' after the IPv6 address")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!("{expected}: write an IPv6 address between [ and ], as \"[::1]:443\""));
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let Some(port) = port.filter(|p| !p.is_empty()) else {
        return Err(format!("{expected}: the port is missing (add \":PORT\")"));
    };
    match port.parse::<u64>() {
        Err(_) => return Err(format!("{expected}: the port \"{port}\" is not a number")),
        Ok(n) if n > 65535 => {
            return Err(format!("{expected}: the port {n} is out of range (a port is from 1 to 65535)"));
        }
        Ok(_) => {}
    }
    let why = if s.starts_with('[') {
        format!("\"{host}\" is not an IPv6 address")
    } else if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let parts: Vec<&str> = host.split('.').collect();
        match parts.iter().find(|p| p.parse::<u32>().map_or(true, |n| n > 255)) {
            Some(p) if parts.len() == 4 => {
                format!("\"{host}\" is not an IPv4 address: {p} is not a number from 0 to 255")
            }
            _ => format!("\"{host}\" is not an IPv4 address: it has four numbers from 0 to 255, as 10.0.0.1"),
        }
    } else if host.is_empty() {
        "the address is missing (0.0.0.0 for every IPv4 address, [::] for every IPv6 one)".to_owned()
    } else {
        format!(
            "\"{host}\" is not an IP address: a name is not resolved here; write the address (0.0.0.0 for every IPv4 address, [::] for every IPv6 one)"
        )
    };
    Err(format!("{expected}: {why}"))
}

/// toml's "duplicate key", with the key and where it was first: the
/// parser's span points at the second one only.
pub fn duplicate_key(text: &str, at: usize) -> String {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let before: Vec<&str> = text[..line_start].lines().collect();
    let rest = &text[at..];
    let key = match rest.strip_prefix(['"', '\'']) {
        Some(r) => r.split(['"', '\'']).next().unwrap_or(""),
        None => rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).next().unwrap_or(""),
    };
    let line = text[line_start..].lines().next().unwrap_or("");
    if let Some(header) = table_header(line) {
        let first = before.iter().position(|l| table_header(l).as_deref() == Some(header.as_str()));
        return match first {
            Some(n) => format!(
                "duplicate key: the table [{header}] is defined twice (first at line {}): merge the two into one",
                n + 1
            ),
            None => format!("duplicate key: the table [{header}] is already defined above: merge the two into one"),
        };
    }
    // The table the key is in, and the key's first line in it.
    let header_at = before.iter().rposition(|l| table_header(l).is_some());
    let table =
        header_at.and_then(|n| table_header(before[n])).map_or("the top level".to_owned(), |h| format!("[{h}]"));
    let first = before.iter().enumerate().skip(header_at.unwrap_or(0)).find(|(_, l)| {
        let t = l.trim_start().trim_start_matches(['"', '\'']);
        t.strip_prefix(key).is_some_and(|r| r.trim_start_matches(['"', '\'']).trim_start().starts_with(['=', '.']))
    });
    match first {
        Some((n, _)) if !key.is_empty() => {
            format!(
                "duplicate key: `{key}` is set twice in {table} (first at line {}, again at line {line_no}): keep one",
                n + 1
            )
        }
        _ => format!("duplicate key: `{key}` in {table} is already defined above (as a key or a table): keep one"),
    }
}

/// `pool.p` of a `[pool.p]` or `[[ pool . p ]]` line (spaces and a comment
/// aside); `None` for any other line.
fn table_header(line: &str) -> Option<String> {
    let t = line.trim_start();
    let inner = t.strip_prefix("[[").or_else(|| t.strip_prefix('['))?;
    let end = inner.find(']')?;
    Some(inner[..end].chars().filter(|c| !c.is_whitespace()).collect())
}

/// Parses `host:port`, `[v6]:port` or `v4:port`.
pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let bad = |why: &str| format!(r#"expected "host:port", found "{s}": {why}"#);
    if let Some((scheme, rest)) = s.split_once("://") {
        let bare = rest.split('/').next().unwrap_or(rest);
        return Err(bad(&format!("a server is an address, not a URL: drop \"{scheme}://\" and write \"{bare}\"")));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let p = p.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address between [ and ]"));
        }
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        if h.contains(':') {
            return Err(bad("write IPv6 addresses as [addr]:port"));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let is_v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    let name_ok = host.starts_with(|c: char| c.is_ascii_alphanumeric())
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !is_v6 && !name_ok {
        return Err(bad("not a valid host name or address"));
    }
    let port: u16 = port.parse().map_err(|_| bad("port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port must be a number from 1 to 65535"));
    }
    Ok(HostPort { host: host.to_owned(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_switch_off() {
        assert_eq!(parse_duration("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(parse_duration("5s"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(parse_duration("10m"), Ok(Some(Duration::from_secs(600))));
        assert_eq!(parse_duration("1.5h"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_duration("none"), Ok(None));
        assert_eq!(parse_duration("0"), Ok(None));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn durations_format_back() {
        for s in ["500ms", "5s", "10m", "2h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap().unwrap()), s);
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(parse_host_port("manager-01:443").unwrap().to_string(), "manager-01:443");
        assert_eq!(parse_host_port("[::1]:6443").unwrap().to_string(), "[::1]:6443");
        assert!(parse_host_port("manager-01").is_err());
        assert!(parse_host_port("manager-01:0").is_err());
        assert!(parse_host_port("manager-01:99999").is_err());
        assert!(parse_host_port("::1:443").is_err());
        assert!(parse_host_port("bad host:443").is_err());
    }

    #[test]
    fn listen_addresses_say_which_part_is_wrong() {
        let e = |s: &str| parse_listen(s, "\"0.0.0.0:443\"").unwrap_err();
        assert!(e("0.0.0.0:70000").ends_with("the port 70000 is out of range (a port is from 1 to 65535)"));
        assert!(
            e("300.1.1.1:9000").ends_with("\"300.1.1.1\" is not an IPv4 address: 300 is not a number from 0 to 255")
        );
        assert!(e("localhost:443").contains("\"localhost\" is not an IP address"));
        assert!(e("10.0.0.1").ends_with("the port is missing (add \":PORT\")"));
        assert!(e("::1:443").contains("between [ and ]"));
        assert!(e("10.0.0.1:https").ends_with("the port \"https\" is not a number"));
        assert_eq!(parse_listen("[::]:0", "").unwrap().port(), 0);
    }

    #[test]
    fn a_duplicate_key_is_named_with_where_it_was_first() {
        let t = "[pool.p]\nservers = []\n[pool . p ] # again\n";
        assert_eq!(
            duplicate_key(t, t.find(". p").unwrap() + 2),
            "duplicate key: the table [pool.p] is defined twice (first at line 1): merge the two into one"
        );
        let t = "[pool.p]\nservers = []\nbalance = \"x\"\nservers = [1]\n";
        assert_eq!(
            duplicate_key(t, t.rfind("servers").unwrap()),
            "duplicate key: `servers` is set twice in [pool.p] (first at line 2, again at line 4): keep one"
        );
    }

    #[test]
    fn line_index_counts_from_one() {
        let li = LineIndex::new("ab\ncd\n");
        assert_eq!(li.pos(0), Pos { line: 1, col: 1 });
        assert_eq!(li.pos(4), Pos { line: 2, col: 2 });
    }
}
