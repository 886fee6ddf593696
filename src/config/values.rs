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
    fn line_index_counts_from_one() {
        let li = LineIndex::new("ab\ncd\n");
        assert_eq!(li.pos(0), Pos { line: 1, col: 1 });
        assert_eq!(li.pos(4), Pos { line: 2, col: 2 });
    }
}
