//! A PROXY header read by a listener: `listen ... proxy_protocol` (the
//! listener's `proxy_protocol = true`), `set_real_ip_from` (its
//! `real_ip_from`) and `proxy_protocol_timeout` (its own), at the stream
//! and server levels as nginx scopes them. Sending one (`proxy_protocol
//! on`) is a pool's `send_proxy_protocol`, read with the other `proxy_*`
//! directives (`server.rs`).

use super::ConvertError;
use super::convert::{Accept, Converter};
use super::read::Directive;

impl Accept {
    /// This level's settings over `parent`'s, each as a whole.
    pub(super) fn or(&self, parent: &Accept) -> Accept {
        Accept {
            real_ip_from: self.real_ip_from.clone().or_else(|| parent.real_ip_from.clone()),
            timeout: self.timeout.clone().or_else(|| parent.timeout.clone()),
            at: self.at.iter().chain(&parent.at).cloned().collect(),
        }
    }
}

/// An address or CIDR block, as `real_ip_from` takes them.
fn address_or_block(v: &str) -> bool {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (v, None),
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else { return false };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| l.parse::<u8>().is_ok_and(|l| l <= max))
}

impl Converter {
    /// Reads `set_real_ip_from` or `proxy_protocol_timeout` into `a`;
    /// false if `d` is neither.
    pub(super) fn accept_directive(&mut self, d: &Directive, a: &mut Accept) -> Result<bool, ConvertError> {
        match d.name.as_str() {
            "set_real_ip_from" => {
                let [v] = d.args.as_slice() else { return Err(d.err("set_real_ip_from takes one address")) };
                if address_or_block(v) {
                    a.real_ip_from.get_or_insert_with(Vec::new).push(v.clone());
                    a.at.push(d.at());
                } else {
                    // A host name (nginx resolves it once) or unix:. The
                    // level still has a list of its own, as in nginx (a
                    // server's replaces the stream's, not adds to it): an
                    // empty one trusts no source rather than the stream's.
                    a.real_ip_from.get_or_insert_with(Vec::new);
                    a.at.push(d.at());
                    let n = self.not_carried(
                        d,
                        "real_ip_from takes IP addresses and CIDR blocks: no header from these sources is believed \
                         (write their addresses), and this level's list still replaces the outer one, as nginx's does",
                    );
                    self.head_notes.push(n);
                }
            }
            "proxy_protocol_timeout" => {
                let [v] = d.args.as_slice() else { return Err(d.err("proxy_protocol_timeout takes one time")) };
                let t = super::convert::parse_format_duration(v)
                    .map_err(|e| d.err(format!("proxy_protocol_timeout {v}: {e}")))?;
                a.timeout = Some(super::write::nonzero(t));
                a.at.push(d.at());
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the `listen` parameter `p` asks for a PROXY header, which
    /// ucp-lb then requires too.
    pub(super) fn proxy_listen(&self, p: &str) -> Result<bool, &'static str> {
        Ok(p == "proxy_protocol")
    }

    /// The listener keys for a PROXY listener of a server {} whose level
    /// says `accept`: (real_ip_from, proxy_protocol_timeout; None: nginx's
    /// default).
    pub(super) fn accept_keys(accept: &Accept) -> (Vec<String>, Option<String>) {
        (accept.real_ip_from.clone().unwrap_or_default(), accept.timeout.clone())
    }

    /// A note where `set_real_ip_from` or `proxy_protocol_timeout` was set
    /// for a server {} with no `listen ... proxy_protocol`: nginx reads no
    /// header there, so they change nothing.
    pub(super) fn accept_unused(&mut self, accept: &Accept, notes: &mut Vec<String>) {
        for at in &accept.at {
            let line = format!("set_real_ip_from or proxy_protocol_timeout ({at})");
            if !self.ignored.iter().any(|i| i.starts_with(&line)) {
                self.ignored.push(format!("{line}: no listen ... proxy_protocol here, nginx reads no header"));
                notes.push(format!(
                    "nginx: {line}: ignored, no listen ... proxy_protocol in this server {{}}, nginx reads no header"
                ));
            }
        }
    }
}
