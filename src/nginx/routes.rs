//! `proxy_pass $var` through a stream-level `map $ssl_preread_server_name`:
//! routes by TLS server name, each to the pool of its value.

use super::ConvertError;
use super::convert::Converter;
use super::read::Directive;

impl Converter {
    /// `proxy_pass $var` where `$var` is a stream-level `map` of
    /// `$ssl_preread_server_name` and the server has `ssl_preread on`: the
    /// pool for the map's `default` (None without one) and a route per
    /// entry. None (said not carried) for any other variable.
    #[allow(clippy::type_complexity)]
    pub(super) fn routed_by_map(
        &mut self,
        to: &str,
        target: &Directive,
        ssl_preread: bool,
        notes: &mut Vec<String>,
    ) -> Result<Option<(Option<usize>, Vec<(String, usize)>)>, ConvertError> {
        let map = self.maps.get(to).filter(|(from, _)| from == "$ssl_preread_server_name").map(|(_, d)| d.clone());
        let (Some(map), true) = (map, ssl_preread) else {
            let why = if ssl_preread {
                "proxy_pass with a variable that is not a map of $ssl_preread_server_name"
            } else {
                "proxy_pass with variables (routing by server name needs ssl_preread on)"
            };
            let n = self.not_carried(target, why);
            self.head_notes.push(n);
            return Ok(None);
        };
        let entries = map.block.as_deref().unwrap_or_default();
        let hostnames = entries.iter().any(|e| e.name == "hostnames");
        let mut default = None;
        let mut routes: Vec<(String, usize)> = Vec::new();
        for e in entries {
            let value = match (e.name.as_str(), e.args.as_slice()) {
                ("hostnames", []) => continue,
                (_, [v]) => v.clone(),
                _ => {
                    let n = self.not_carried(e, "a map entry of one key and one value was expected");
                    notes.push(n);
                    continue;
                }
            };
            if value.contains('$') {
                let n = self.not_carried(e, "a map value with variables");
                notes.push(n);
                continue;
            }
            let idx = self.pool_for(&value, e)?;
            let key = e.name.as_str();
            if key == "default" {
                default = Some(idx);
                continue;
            }
            // With `hostnames`, ".example.com" is example.com and every
            // name below it; a trailing "www.example.*" has no ucp-lb form.
            let names: Vec<String> = match key.strip_prefix('.') {
                Some(base) if hostnames => vec![base.to_owned(), format!("*.{base}")],
                _ if key.starts_with('~') || (hostnames && key.ends_with(".*")) => {
                    let n = self.not_carried(e, "regular expressions and trailing wildcards have no ucp-lb route");
                    notes.push(n);
                    continue;
                }
                _ if key.starts_with("*.") && !hostnames => {
                    let n =
                        self.not_carried(e, "a wildcard key in a map without `hostnames` matches only itself in nginx");
                    notes.push(n);
                    continue;
                }
                _ => vec![key.to_owned()],
            };
            for name in names {
                if crate::wire::sni::Pattern::parse(&name).is_err() {
                    let n = self.not_carried(e, "not a server name ucp-lb can route");
                    notes.push(n);
                    continue;
                }
                if routes.iter().any(|(r, _)| r.eq_ignore_ascii_case(&name)) {
                    let n =
                        self.warn(e, format!("{name} again: ucp-lb compares names without case; the first is used"));
                    notes.push(n);
                    continue;
                }
                routes.push((name, idx));
            }
        }
        if routes.is_empty() {
            let n = self.not_carried(target, "the map routes no server name ucp-lb can carry");
            self.head_notes.push(n);
            return Ok(None);
        }
        notes.push(format!(
            "nginx: ssl_preread with map {} ({}): routed by TLS server name; names compare without case here",
            to,
            map.at()
        ));
        Ok(Some((default, routes)))
    }
}
