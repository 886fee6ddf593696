//! `allow`, `deny`, `limit_conn` and `limit_conn_zone`: who may connect,
//! and how many connections a client may hold.
//!
//! nginx counts a zone across every server naming it, each server with its
//! own number. A zone on the client's address that several listeners
//! name, each with it as its only such limit, becomes a `[limit.NAME]`
//! they name (counted once across them, as nginx does), with the first
//! one's number; a listener with another number sets it as its own
//! `max_connections_per_client`. A zone only one listener names, or a
//! listener with several such zones, is the listener's own
//! `max_connections_per_client` (the smallest, when several apply), as is
//! a zone on the address and `$server_port` (counted per port in nginx).

use std::collections::BTreeMap;

use super::ConvertError;
use super::convert::{Admission, Converter, Listener};
use super::read::Directive;

impl Converter {
    /// `allow`, `deny` and `limit_conn` (stream or server level) into
    /// `adm`; false when `d` is none of them.
    pub(super) fn admission_directive(&mut self, d: &Directive, adm: &mut Admission) -> Result<bool, ConvertError> {
        match d.name.as_str() {
            "allow" | "deny" => {
                let [what] = d.args.as_slice() else {
                    return Err(d.err(format!("{} takes one address, prefix or `all`", d.name)));
                };
                if what.starts_with("unix:") {
                    let n = self.not_carried(d, "ucp-lb listens on TCP only");
                    self.head_notes.push(n);
                    return Ok(true);
                }
                let rule = format!("{} {what}", d.name);
                // nginx refuses an address it cannot read too.
                crate::wire::admission::Rule::parse(&rule).map_err(|e| d.err(e))?;
                adm.access.get_or_insert_with(Vec::new).push(rule);
            }
            "limit_conn" => {
                let [zone, n] = d.args.as_slice() else {
                    return Err(d.err("limit_conn takes a zone and a number"));
                };
                let n = n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    d.err(format!("limit_conn {zone} {n}: the number must be a whole number above 0"))
                })?;
                adm.limits.get_or_insert_with(Vec::new).push((zone.clone(), n, d.at()));
            }
            // How refusals are logged, or counting without refusing: ucp-lb
            // always refuses and logs at debug, counting every refusal.
            "limit_conn_log_level" | "limit_conn_dry_run" => {
                let n = self.not_carried(d, "ucp-lb refuses over the limit and counts each refusal per listener");
                self.head_notes.push(n);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `limit_conn_zone KEY zone=NAME:SIZE` at the stream level.
    pub(super) fn limit_conn_zone(&mut self, d: &Directive) -> Result<(), ConvertError> {
        let (Some(key), Some(zone)) = (d.args.first(), d.args.iter().find_map(|a| a.strip_prefix("zone="))) else {
            return Err(d.err("limit_conn_zone takes a key and zone=NAME:SIZE"));
        };
        let name = zone.split(':').next().unwrap_or(zone);
        self.limit_zones.insert(name.to_owned(), key.clone());
        Ok(())
    }

    /// The `limit_conn`s that apply to a server as one per-client limit:
    /// those on zones keyed by the client's address (the smallest wins, as
    /// each is enforced), and those zones with their numbers; the others
    /// are said not carried.
    pub(super) fn per_client(
        &mut self,
        limits: Option<Vec<(String, u32, String)>>,
        notes: &mut Vec<String>,
    ) -> (Option<u32>, Vec<(String, u32)>) {
        let mut out: Option<u32> = None;
        let mut zones: Vec<(String, u32)> = Vec::new();
        for (zone, n, at) in limits.unwrap_or_default() {
            match self.limit_zones.get(&zone).map(String::as_str) {
                Some("$binary_remote_addr" | "$remote_addr") => {
                    out = Some(out.map_or(n, |o| o.min(n)));
                    match zones.iter_mut().find(|(z, _)| *z == zone) {
                        Some((_, m)) => *m = (*m).min(n),
                        None => zones.push((zone, n)),
                    }
                }
                // Counted per client and listening port: each listener's own.
                Some(key) if per_port(key) => {
                    out = Some(out.map_or(n, |o| o.min(n)));
                    notes.push(format!(
                        "nginx: {at}: limit_conn {zone} {n}: {key} counts a client per port: this listener's own limit"
                    ));
                }
                Some(key) => {
                    let what = format!(
                        "{at}: limit_conn {zone} {n}: counts by {key}: not carried over (ucp-lb limits per client address only)"
                    );
                    self.warnings.push(what.clone());
                    notes.push(format!("nginx: {what}"));
                }
                None => {
                    let what =
                        format!("{at}: limit_conn {zone} {n}: no limit_conn_zone named {zone}; not carried over");
                    self.warnings.push(what.clone());
                    notes.push(format!("nginx: {what}"));
                }
            }
        }
        (out, zones)
    }
}

/// Whether a `limit_conn_zone` key is the client's address and
/// `$server_port` (either order, at most a separator between): nginx then
/// counts a client per listening port, as ucp-lb counts a listener's own
/// `max_connections_per_client` (one port per listener).
fn per_port(key: &str) -> bool {
    let Some(rest) = ["$binary_remote_addr", "$remote_addr"].iter().find_map(|a| {
        let (before, after) = key.split_once(a)?;
        Some(format!("{before} {after}"))
    }) else {
        return false;
    };
    rest.split_once("$server_port")
        .is_some_and(|(before, after)| format!("{before}{after}").chars().all(|c| " :-/,".contains(c)))
}

/// The listeners naming each address zone.
fn by_zone(listeners: &[Listener]) -> BTreeMap<&str, Vec<&Listener>> {
    let mut by_zone: BTreeMap<&str, Vec<&Listener>> = BTreeMap::new();
    for l in listeners {
        for (z, _) in &l.zones {
            by_zone.entry(z).or_default().push(l);
        }
    }
    by_zone
}

/// Whether the listeners naming a zone can share it as one `[limit.NAME]`:
/// two or more, each with it as its only address zone, and a name lb.toml
/// takes.
fn shareable(zone: &str, ls: &[&Listener]) -> bool {
    ls.len() > 1
        && ls.iter().all(|l| l.zones.len() == 1)
        && zone.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The zones the listeners share as `[limit.NAME]`s, with their number.
pub(super) fn shared_limits(listeners: &[Listener]) -> BTreeMap<String, u32> {
    by_zone(listeners)
        .into_iter()
        .filter(|(z, ls)| shareable(z, ls))
        .map(|(z, ls)| (z.to_owned(), ls[0].zones[0].1))
        .collect()
}

impl Converter {
    /// A zone several listeners name that cannot be one shared limit: each
    /// listener counts on its own, which is said.
    pub(super) fn unshared_zones(&mut self) {
        let mut said = Vec::new();
        for (zone, ls) in by_zone(&self.listeners) {
            if ls.len() > 1 && !shareable(zone, &ls) {
                said.push(format!(
                    "limit_conn {zone}: named by {} listeners, some beside another zone (ucp-lb counts a listener in one table): each counts its clients on its own (nginx counts the zone across them)",
                    ls.len()
                ));
            }
        }
        self.warnings.extend(said);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_of_the_address_and_server_port_counts_per_port() {
        for key in ["$binary_remote_addr$server_port", "$remote_addr:$server_port", "$server_port $remote_addr"] {
            assert!(super::per_port(key), "{key}");
        }
        for key in
            ["$binary_remote_addr", "$server_port", "$binary_remote_addr$server_portx", "$remote_addr$server_addr"]
        {
            assert!(!super::per_port(key), "{key}");
        }
    }
}
