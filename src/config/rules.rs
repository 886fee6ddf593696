//! Values a listener's config holds and its traffic path applies: `access`
//! rules, per-client limits, and the server name patterns of `routes`.
//! Here, with the config that validates them, so the config imports
//! nothing of the traffic path; `admission.rs` applies rules and limits at
//! accept, `sni.rs` matches patterns against a ClientHello's name.

use std::net::IpAddr;

use ipnet::IpNet;

/// One `access` rule: `allow` or `deny` an address, a prefix, or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `None`: every address (`all`).
    pub net: Option<IpNet>,
}

impl Rule {
    /// Parses "allow 10.0.0.0/8", "deny 2001:db8::1", "deny all".
    pub fn parse(s: &str) -> Result<Rule, String> {
        let mut words = s.split_whitespace();
        let (verb, what, rest) = (words.next(), words.next(), words.next());
        let allow = match verb {
            Some("allow") => true,
            Some("deny") => false,
            _ => {
                return Err(format!(
                    "expected \"allow ADDRESS[/PREFIX]\" or \"deny ...\" (or \"... all\"), found \"{s}\""
                ));
            }
        };
        let (Some(what), None) = (what, rest) else {
            return Err(format!("expected one address, prefix or `all` after `{}`, found \"{s}\"", verb.unwrap_or("")));
        };
        if what == "all" {
            return Ok(Rule { allow, net: None });
        }
        let net = match what.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match what.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => {
                    return Err(format!(
                        "\"{what}\" is not an address, a prefix like 10.0.0.0/8 or 2001:db8::/32, or `all`"
                    ));
                }
            },
        };
        // 10.1.2.3/8 is read as 10.0.0.0/8 (nginx warns "low address bits
        // are meaningless" and does the same).
        Ok(Rule { allow, net: Some(net.trunc()) })
    }

    /// Whether the rule is about `ip` (a client's address as rules see it).
    pub fn matches(&self, ip: IpAddr) -> bool {
        self.net.is_none_or(|n| n.contains(&ip))
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.allow { "allow" } else { "deny" };
        match &self.net {
            None => write!(f, "{verb} all"),
            // A single address is written without its /32 or /128.
            Some(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{verb} {}", n.addr()),
            Some(n) => write!(f, "{verb} {n}"),
        }
    }
}

/// Per-client limits of one listener; 0: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Open connections one client address may hold.
    pub open: u32,
    /// New connections one client address may make per second (a bucket
    /// of that many, refilled at that rate).
    pub rate: u32,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.open > 0 || self.rate > 0
    }
}

/// A listener's `proxy_protocol = true`: every client opens with a PROXY
/// header, read within `timeout` and `max_header` bytes; its address is
/// believed from the sources `real_ip_from` lists (nginx's
/// `set_real_ip_from`), read and set aside from any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub real_ip_from: Vec<IpNet>,
    pub timeout: std::time::Duration,
    pub max_header: usize,
}

impl ProxyProtocol {
    /// Whether a header from `peer` (as rules see it) is believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.real_ip_from.iter().any(|n| n.contains(&peer))
    }
}

/// Parses one `real_ip_from` entry: an address or a prefix.
pub fn parse_source(s: &str) -> Result<IpNet, String> {
    match s.parse::<IpNet>() {
        Ok(n) => Ok(n.trunc()),
        Err(_) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("\"{s}\" is not an address or a prefix like 10.0.0.0/8 or 2001:db8::/32")),
    }
}

/// A server name as routes compare it: lower case, no trailing dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A route's pattern: an exact name, or `*.suffix` matching any name that
/// ends in `.suffix` (any number of labels before it, as nginx's
/// `*.example.com`; not `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Wildcard(String),
}

impl Pattern {
    /// Parses a route's name; an error says what is wrong.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let n = normalise(s);
        let (wild, host) = match n.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, n.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "\"{s}\" is not a server name: expected a DNS name like \"ucp.example.com\" or a wildcard like \"*.example.com\""
            ));
        }
        Ok(if wild { Pattern::Wildcard(host.to_owned()) } else { Pattern::Exact(host.to_owned()) })
    }

    /// How well `name` (normalised) matches: None when it does not; else
    /// higher is more specific (exact beats any wildcard, a longer suffix
    /// beats a shorter one), as nginx picks.
    pub fn score(&self, name: &str) -> Option<usize> {
        match self {
            Pattern::Exact(e) => (e == name).then_some(usize::MAX),
            Pattern::Wildcard(suffix) => {
                let head = name.strip_suffix(suffix.as_str())?;
                (head.len() > 1 && head.ends_with('.')).then_some(suffix.len())
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(e) => f.write_str(e),
            Pattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_as_written() {
        for (input, shown) in [
            ("allow 10.0.0.0/8", "allow 10.0.0.0/8"),
            ("deny   all", "deny all"),
            ("deny 10.1.2.3/8", "deny 10.0.0.0/8"),
            ("allow ::1", "allow ::1"),
            ("allow 2001:db8::/32", "allow 2001:db8::/32"),
        ] {
            assert_eq!(Rule::parse(input).unwrap().to_string(), shown);
        }
        for bad in ["permit 10.0.0.0/8", "allow", "allow 10.0.0.0/33", "deny 10.0.0.0/8 extra", "allow host.example"] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_names_are_checked() {
        for ok in ["ucp.test", "*.example.com", "dtr-1.example.com", "localhost"] {
            assert!(Pattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*.", "a..b", "ucp test", "*", "a.*.com", "-a.com", "10.0.0.1:443"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
