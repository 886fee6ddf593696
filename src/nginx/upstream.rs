//! `upstream {}` blocks as pools: their servers with nginx's defaults
//! written out, the balancing method, and per-server limits settled per
//! pool.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConvertError;
use super::convert::{Converter, NGINX_FAIL_TIMEOUT, Pool, Server, parse_format_duration, placeholder, unfilled};
use super::read::Directive;
use crate::config::format_duration;

impl Converter {
    pub(super) fn upstream(&mut self, d: &Directive) -> Result<(), ConvertError> {
        let [name] = d.args.as_slice() else {
            return Err(d.err("upstream takes one name"));
        };
        let mut pool = Pool {
            name: self.pool_name(name),
            origin: name.clone(),
            at: d.at(),
            comments: d.comments.clone(),
            balance: "round_robin",
            servers: Vec::new(),
            notes: Vec::new(),
            proxy: None,
            used_at: String::new(),
            health: None,
        };
        let errors_before = self.errors.len();
        if pool.name != *name {
            pool.notes
                .push(format!("nginx upstream \"{name}\": renamed, pool names hold only letters, digits, _ and -"));
        }
        for x in d.block.as_deref().unwrap_or_default() {
            match x.name.as_str() {
                "server" => {
                    let r = self.server(x);
                    if let Some(s) = self.keep(r) {
                        pool.servers.push(s);
                    }
                }
                "least_conn" => pool.balance = "least_conn",
                "random" => {
                    pool.balance = "random_two";
                    match x.args.first().map(String::as_str) {
                        Some("two") if x.args.get(1).is_none_or(|m| m == "least_conn") => {}
                        Some("two") => {
                            let n = self.warn(x, "random_two (which picks the one with fewer connections) used".into());
                            pool.notes.push(n);
                        }
                        _ => {
                            let n = self.warn(x, "plain random has no twin; random_two used".into());
                            pool.notes.push(n);
                        }
                    }
                }
                "hash" => match x.args.as_slice() {
                    [k, c] if k == "$remote_addr" && c == "consistent" => pool.balance = "source_hash",
                    [k] if k == "$remote_addr" => pool.balance = "source_hash_map",
                    _ => {
                        let n = self.not_carried(
                            x,
                            "only hash $remote_addr is carried (as source_hash_map, or source_hash with consistent); \
                             round_robin used",
                        );
                        pool.notes.push(n);
                    }
                },
                _ => {
                    let n = match self.no_difference(x) {
                        Some(n) => n,
                        None => self.not_carried(x, "no ucp-lb equivalent"),
                    };
                    pool.notes.push(n);
                }
            }
        }
        if self.errors.len() > errors_before {
            self.failed_upstreams.push(name.clone());
            return Ok(());
        }
        if pool.servers.is_empty() {
            self.failed_upstreams.push(name.clone());
            return Err(d.err(format!("upstream \"{name}\" has no server (nginx refuses this too)")));
        }
        self.settle_per_server_limits(d, &mut pool);
        self.pools.push(pool);
        Ok(())
    }

    /// nginx sets max_fails/fail_timeout per server, ucp-lb per pool: the
    /// value most primary servers have is used (they decide where clients
    /// go; a backup's only once every primary is out), with a warning for
    /// the others. `server a fail_timeout=1s; server b backup;` takes 1s,
    /// as nginx's own stream_upstream.t expects a recovery after 1s.
    pub(super) fn settle_per_server_limits(&mut self, d: &Directive, pool: &mut Pool) {
        let mut counts: BTreeMap<(u32, Duration), usize> = BTreeMap::new();
        let mut votes: BTreeMap<(u32, Duration), usize> = BTreeMap::new();
        let has_primary = pool.servers.iter().any(|s| !s.backup);
        for s in &pool.servers {
            *counts.entry((s.max_fails, s.fail_timeout)).or_default() += 1;
            if !s.backup || !has_primary {
                *votes.entry((s.max_fails, s.fail_timeout)).or_default() += 1;
            }
        }
        if counts.len() > 1 {
            let (&(mf, ft), _) = votes.iter().max_by_key(|(_, n)| **n).unwrap_or((&(1, NGINX_FAIL_TIMEOUT), &0));
            let odd: Vec<String> = pool
                .servers
                .iter()
                .filter(|s| (s.max_fails, s.fail_timeout) != (mf, ft))
                .map(|s| {
                    format!(
                        "{} (max_fails={} fail_timeout={})",
                        s.address,
                        s.max_fails,
                        format_duration(s.fail_timeout)
                    )
                })
                .collect();
            let n = self.warn(
                d,
                format!(
                    "ucp-lb sets max_fails and fail_timeout per pool: {mf} and {} used, also for {}",
                    format_duration(ft),
                    odd.join(", ")
                ),
            );
            pool.notes.push(n);
            for s in &mut pool.servers {
                s.max_fails = mf;
                s.fail_timeout = ft;
            }
        }
    }

    pub(super) fn server(&mut self, d: &Directive) -> Result<Server, ConvertError> {
        let Some(addr) = d.args.first() else {
            return Err(d.err("server needs an address"));
        };
        if addr.starts_with("unix:") {
            return Err(d.err("a unix: socket server cannot be carried over (ucp-lb connects over TCP only)"));
        }
        if let Some(p) = placeholder(addr) {
            return Err(d.err(format!(
                "server {addr}: {p} is a placeholder (as in Docker's example configs): put the server's address in its place, then convert"
            )));
        }
        if let Some(var) = unfilled(addr) {
            return Err(d.err(format!(
                "server {addr}: {var} is a template variable that was never filled in (nginx itself would refuse it): fill it in, then convert"
            )));
        }
        if crate::config::parse_host_port(addr).is_err() {
            return Err(
                d.err(format!("expected host:port, found \"{addr}\" (nginx's stream module needs the port too)"))
            );
        }
        let mut s = Server::new(addr, d.comments.clone());
        for p in &d.args[1..] {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let num = || v.parse::<u32>().map_err(|_| d.err(format!("{k}: expected a whole number, found \"{v}\"")));
            match k {
                "weight" => s.weight = num()?.max(1),
                "max_fails" => s.max_fails = num()?,
                "max_conns" => s.max_conns = num()?,
                "fail_timeout" => {
                    s.fail_timeout = parse_format_duration(v).map_err(|e| d.err(format!("fail_timeout: {e}")))?
                }
                "slow_start" => {
                    s.slow_start = Some(parse_format_duration(v).map_err(|e| d.err(format!("slow_start: {e}")))?)
                }
                "backup" => s.backup = true,
                "down" => s.down = true,
                _ => {
                    self.warnings.push(format!("{}: server {addr}: parameter {p}: not carried over", d.at()));
                    s.dropped.push(p.clone());
                }
            }
        }
        Ok(s)
    }

    pub(super) fn pool_name(&self, want: &str) -> String {
        let clean: String =
            want.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let mut name = if clean.is_empty() { "pool".to_owned() } else { clean };
        let base = name.clone();
        let mut n = 2;
        while self.pools.iter().any(|p| p.name == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }
}
