//! `ucp-lb convert-nginx`: an nginx config's `stream {}` block as lb.toml.
//!
//! Three steps: read the files into a tree of directives (nginx's own
//! tokenizing rules: words, quotes, `;`, `{`, `}`, `#` comments, `include`
//! with globs), turn the `upstream` and `server` blocks into pools and
//! listeners with nginx's defaults written out, then write lb.toml and parse
//! it with ucp-lb's own config parser, so what is printed always passes
//! `ucp-lb check`. Everything outside `stream {}` is ignored; every
//! directive inside it that cannot be carried over becomes a comment in the
//! output and a warning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::format_duration;

/// A file that cannot be read, or syntax that cannot be: `file:line: what`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct ConvertError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

/// What `convert` gives back: the lb.toml text and one warning per
/// directive it could not carry over (also written into the text).
#[derive(Debug)]
pub struct Converted {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
    file: Arc<str>,
    line: usize,
    /// `#` comment lines just above it, without the `#`.
    comments: Vec<String>,
}

impl Directive {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// The directive as written, on one line.
    fn text(&self) -> String {
        let mut s = self.name.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        if self.block.is_some() { s + " { ... }" } else { s + ";" }
    }

    fn err(&self, msg: impl Into<String>) -> ConvertError {
        ConvertError { file: self.file.to_string(), line: self.line, msg: msg.into() }
    }
}

// ---------------------------------------------------------------- reading

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
    Comment(String),
}

/// Splits one file into tokens with their line numbers, as nginx's
/// `ngx_conf_read_token` does: `#` starts a comment only where a word could
/// start, quotes may hold anything with `\` escapes, `${var}` keeps its
/// braces.
fn tokenize(text: &str, file: &str) -> Result<Vec<(Tok, usize)>, ConvertError> {
    let err = |line, msg: String| ConvertError { file: file.to_owned(), line, msg };
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            ';' | '{' | '}' => {
                chars.next();
                out.push((
                    match c {
                        ';' => Tok::Semi,
                        '{' => Tok::Open,
                        _ => Tok::Close,
                    },
                    line,
                ));
            }
            '#' => {
                chars.next();
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push((Tok::Comment(s), line));
            }
            '"' | '\'' => {
                let quote = c;
                let start = line;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(err(start, format!("unexpected end of file: a {quote} is not closed"))),
                        Some('\\') => match chars.next() {
                            Some(q) if q == quote || q == '\\' => s.push(q),
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some(o) => {
                                s.push('\\');
                                s.push(o);
                            }
                            None => return Err(err(start, format!("unexpected end of file: a {quote} is not closed"))),
                        },
                        Some(q) if q == quote => break,
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            s.push(ch);
                        }
                    }
                }
                match chars.peek() {
                    None | Some(';' | '{' | '}') => {}
                    Some(ch) if ch.is_whitespace() => {}
                    Some(ch) => return Err(err(line, format!("unexpected \"{ch}\" right after a quoted string"))),
                }
                out.push((Tok::Word(s), start));
            }
            _ => {
                let mut s = String::new();
                let mut in_var = false;
                while let Some(&c) = chars.peek() {
                    if c == '{' && s.ends_with('$') {
                        in_var = true;
                    } else if c == '}' && in_var {
                        in_var = false;
                    } else if c.is_whitespace() || c == ';' || c == '{' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push((Tok::Word(s), line));
            }
        }
    }
    Ok(out)
}

/// Reads nginx configs, following `include`.
struct Reader {
    /// Relative `include` paths are taken from here: the directory of the
    /// main file, nginx's conf prefix in the usual layout.
    base: PathBuf,
    depth: usize,
    /// Blocks open right now, across includes.
    nesting: usize,
}

const MAX_INCLUDE_DEPTH: usize = 16;
/// nginx configs nest three or four deep; a limit keeps hostile input from
/// exhausting the stack.
const MAX_NESTING: usize = 64;

impl Reader {
    fn read_file(&mut self, path: &Path, from: Option<&Directive>) -> Result<Vec<Directive>, ConvertError> {
        let name: Arc<str> = Arc::from(path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| match from {
            Some(d) => d.err(format!("include {}: {e}", path.display())),
            None => ConvertError { file: name.to_string(), line: 0, msg: format!("cannot read the nginx config: {e}") },
        })?;
        let toks = tokenize(&text, &name)?;
        let mut pos = 0;
        let list = self.parse_block(&toks, &mut pos, &name, None)?;
        Ok(list)
    }

    /// Directives up to the `}` closing the block opened at `open` (or to
    /// the end of the file when `open` is None).
    fn parse_block(
        &mut self,
        toks: &[(Tok, usize)],
        pos: &mut usize,
        file: &Arc<str>,
        open: Option<usize>,
    ) -> Result<Vec<Directive>, ConvertError> {
        let err = |line, msg: &str| ConvertError { file: file.to_string(), line, msg: msg.to_owned() };
        let mut list = Vec::new();
        let mut comments = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut first_line = 0;
        while let Some((tok, line)) = toks.get(*pos) {
            *pos += 1;
            match tok {
                Tok::Comment(c) => {
                    if words.is_empty() {
                        comments.push(c.clone());
                    }
                }
                Tok::Word(w) => {
                    if words.is_empty() {
                        first_line = *line;
                    }
                    words.push(w.clone());
                }
                Tok::Semi | Tok::Open => {
                    let what = if *tok == Tok::Semi { "\";\"" } else { "\"{\"" };
                    if words.is_empty() {
                        return Err(err(*line, &format!("unexpected {what}")));
                    }
                    let name = words.remove(0);
                    let block = if *tok == Tok::Open {
                        if self.nesting >= MAX_NESTING {
                            return Err(err(*line, &format!("blocks nested more than {MAX_NESTING} deep")));
                        }
                        self.nesting += 1;
                        let inner = self.parse_block(toks, pos, file, Some(*line));
                        self.nesting -= 1;
                        Some(inner?)
                    } else {
                        None
                    };
                    let d = Directive {
                        name,
                        args: std::mem::take(&mut words),
                        block,
                        file: file.clone(),
                        line: first_line,
                        comments: std::mem::take(&mut comments),
                    };
                    if d.name == "include" && d.block.is_none() {
                        list.extend(self.include(&d)?);
                    } else {
                        list.push(d);
                    }
                }
                Tok::Close => {
                    if !words.is_empty() {
                        let msg = format!("\"{}\" has no \";\" before the \"}}\" on line {line}", words.join(" "));
                        return Err(err(first_line, &msg));
                    }
                    if open.is_none() {
                        return Err(err(*line, "unexpected \"}\": no block is open here"));
                    }
                    return Ok(list);
                }
            }
        }
        if !words.is_empty() {
            return Err(err(first_line, "unexpected end of file, expecting \";\" or \"}\""));
        }
        if let Some(open) = open {
            return Err(err(open, "unexpected end of file: the \"{\" opened here is not closed"));
        }
        Ok(list)
    }

    fn include(&mut self, d: &Directive) -> Result<Vec<Directive>, ConvertError> {
        let [pattern] = d.args.as_slice() else {
            return Err(d.err("include takes one file name or pattern"));
        };
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(
                d.err(format!("include nested more than {MAX_INCLUDE_DEPTH} deep (does a file include itself?)"))
            );
        }
        let path = self.base.join(pattern);
        let files = if pattern.contains(['*', '?', '[']) {
            glob(&path).map_err(|e| d.err(format!("include {pattern}: {e}")))?
        } else {
            vec![path]
        };
        self.depth += 1;
        let mut out = Vec::new();
        for f in files {
            let r = self.read_file(&f, Some(d));
            if r.is_err() {
                self.depth -= 1;
            }
            out.extend(r?);
        }
        self.depth -= 1;
        Ok(out)
    }
}

/// The files matching a pattern whose wildcards are in the last path
/// component (`conf.d/*.conf`, nginx's common use), sorted as glob(3) does.
fn glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let name = pattern.file_name().and_then(|n| n.to_str()).ok_or("not a file pattern")?;
    if dir.to_string_lossy().contains(['*', '?', '[']) {
        return Err("wildcards are read only in the file name, not in directories".into());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // nginx: a pattern that matches nothing is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| !n.starts_with('.') && wildcard(name, n)))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// `*`, `?` and `[...]` (ranges, `!` negation) against one file name.
fn wildcard(pat: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|&c| c == ']').map(|i| i + 1) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let set = &p[1..end];
                let (neg, set) = match set.first() {
                    Some('!' | '^') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != neg && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

// ------------------------------------------------------------- converting

/// nginx's defaults where they differ from ucp-lb's.
const NGINX_MAX_FAILS: u32 = 1;
const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
const NGINX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const NGINX_PROXY_TIMEOUT: Duration = Duration::from_secs(600);

/// The per-`server {}` proxy settings, which ucp-lb keeps per pool.
#[derive(Debug, Clone, PartialEq, Default)]
struct Proxy {
    connect_timeout: Option<Duration>,
    /// `Some(None)`: switched off.
    idle_timeout: Option<Option<Duration>>,
    next_upstream: Option<bool>,
    tries: Option<u32>,
}

impl Proxy {
    fn or(&self, parent: &Proxy) -> Proxy {
        Proxy {
            connect_timeout: self.connect_timeout.or(parent.connect_timeout),
            idle_timeout: self.idle_timeout.or(parent.idle_timeout),
            next_upstream: self.next_upstream.or(parent.next_upstream),
            tries: self.tries.or(parent.tries),
        }
    }

    fn retries(&self) -> String {
        match (self.next_upstream.unwrap_or(true), self.tries.unwrap_or(0)) {
            (false, _) => "0".into(),
            (true, 0) => "\"all\"".into(),
            (true, n) => (n - 1).to_string(),
        }
    }
}

#[derive(Debug)]
struct Server {
    address: String,
    weight: u32,
    max_fails: u32,
    fail_timeout: Duration,
    backup: bool,
    down: bool,
    max_conns: u32,
    comments: Vec<String>,
    /// Parameters that were not carried over, already warned about.
    dropped: Vec<String>,
}

impl Server {
    /// A server line with nginx's defaults.
    fn new(address: &str, comments: Vec<String>) -> Server {
        Server {
            address: address.to_owned(),
            weight: 1,
            max_fails: NGINX_MAX_FAILS,
            fail_timeout: NGINX_FAIL_TIMEOUT,
            backup: false,
            down: false,
            max_conns: 0,
            comments,
            dropped: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Pool {
    name: String,
    /// `upstream NAME` as written, or the `proxy_pass` target.
    origin: String,
    at: String,
    comments: Vec<String>,
    balance: &'static str,
    servers: Vec<Server>,
    /// Comment lines for the pool table (directives not carried over).
    notes: Vec<String>,
    /// From the first `server {}` proxying to it; None if none does.
    proxy: Option<Proxy>,
    used_at: String,
}

#[derive(Debug)]
struct Listener {
    bind: String,
    pool: String,
    comments: Vec<String>,
    notes: Vec<String>,
}

#[derive(Default)]
struct Converter {
    warnings: Vec<String>,
    pools: Vec<Pool>,
    listeners: Vec<Listener>,
    /// Lines for the head of the file: stream-level directives not carried.
    head_notes: Vec<String>,
}

impl Converter {
    /// Records a directive that was not carried over: a warning, and the
    /// comment line returned for the output.
    fn not_carried(&mut self, d: &Directive, why: &str) -> String {
        self.warnings.push(format!("{}: {}: not carried over: {why}", d.at(), d.text()));
        format!("nginx: {}  ({}): not carried over: {why}", d.text(), d.at())
    }

    fn warn(&mut self, d: &Directive, what: String) -> String {
        self.warnings.push(format!("{}: {}: {what}", d.at(), d.text()));
        format!("nginx: {}  ({}): {what}", d.text(), d.at())
    }

    fn upstream(&mut self, d: &Directive) -> Result<(), ConvertError> {
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
        };
        if pool.name != *name {
            pool.notes
                .push(format!("nginx upstream \"{name}\": renamed, pool names hold only letters, digits, _ and -"));
        }
        for x in d.block.as_deref().unwrap_or_default() {
            match x.name.as_str() {
                "server" => {
                    let s = self.server(x)?;
                    pool.servers.push(s);
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
                    [k] if k == "$remote_addr" => {
                        pool.balance = "source_hash";
                        let n = self.warn(
                            x,
                            "source_hash is nginx's consistent hash: the same client keeps one server, but not \
                             the one plain hash picked"
                                .into(),
                        );
                        pool.notes.push(n);
                    }
                    _ => {
                        let n =
                            self.not_carried(x, "only hash $remote_addr is carried (as source_hash); round_robin used");
                        pool.notes.push(n);
                    }
                },
                "zone" => pool.notes.push(format!(
                    "nginx: {}  ({}): not needed, ucp-lb's workers share server state",
                    x.text(),
                    x.at()
                )),
                _ => {
                    let n = self.not_carried(x, "no ucp-lb equivalent");
                    pool.notes.push(n);
                }
            }
        }
        if pool.servers.is_empty() {
            return Err(d.err(format!("upstream \"{name}\" has no server (nginx refuses this too)")));
        }
        self.settle_per_server_limits(d, &mut pool);
        self.pools.push(pool);
        Ok(())
    }

    /// nginx sets max_fails/fail_timeout per server, ucp-lb per pool: the
    /// value most servers have is used, with a warning for the others.
    fn settle_per_server_limits(&mut self, d: &Directive, pool: &mut Pool) {
        let mut counts: BTreeMap<(u32, Duration), usize> = BTreeMap::new();
        for s in &pool.servers {
            *counts.entry((s.max_fails, s.fail_timeout)).or_default() += 1;
        }
        if counts.len() > 1 {
            let (&(mf, ft), _) = counts.iter().max_by_key(|(_, n)| **n).unwrap_or((&(1, NGINX_FAIL_TIMEOUT), &0));
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

    fn server(&mut self, d: &Directive) -> Result<Server, ConvertError> {
        let Some(addr) = d.args.first() else {
            return Err(d.err("server needs an address"));
        };
        if addr.starts_with("unix:") {
            return Err(d.err("a unix: socket server cannot be carried over (ucp-lb connects over TCP only)"));
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

    fn pool_name(&self, want: &str) -> String {
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

    /// Reads a `proxy_*` directive into `p`; false if it is not one.
    fn proxy_directive(&mut self, d: &Directive, p: &mut Proxy) -> Result<bool, ConvertError> {
        let one = || match d.args.as_slice() {
            [a] => Ok(a.as_str()),
            _ => Err(d.err(format!("{} takes one value", d.name))),
        };
        let time = |v: &str| parse_format_duration(v).map_err(|e| d.err(format!("{}: {e}", d.name)));
        match d.name.as_str() {
            "proxy_connect_timeout" => p.connect_timeout = Some(time(one()?)?),
            "proxy_timeout" => {
                let t = time(one()?)?;
                p.idle_timeout = Some(if t.is_zero() { None } else { Some(t) });
            }
            "proxy_next_upstream" => {
                p.next_upstream = Some(match one()? {
                    "on" => true,
                    "off" => false,
                    v => return Err(d.err(format!("proxy_next_upstream: expected on or off, found \"{v}\""))),
                })
            }
            "proxy_next_upstream_tries" => {
                let v = one()?;
                p.tries = Some(v.parse().map_err(|_| d.err(format!("expected a whole number, found \"{v}\"")))?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn server_block(&mut self, d: &Directive, stream: &Proxy) -> Result<(), ConvertError> {
        let mut proxy = Proxy::default();
        let mut binds: Vec<(String, Vec<String>)> = Vec::new();
        let mut target: Option<&Directive> = None;
        let mut notes = Vec::new();
        let block = d.block.as_deref().unwrap_or_default();
        for x in block {
            if self.proxy_directive(x, &mut proxy)? {
                continue;
            }
            match x.name.as_str() {
                "listen" => {
                    if let Some(b) = self.listen(x, &mut notes)? {
                        binds.push((b, x.comments.clone()));
                    }
                }
                "proxy_pass" => target = Some(x),
                "proxy_next_upstream_timeout" if x.args.first().is_some_and(|v| v == "0") => {}
                "tcp_nodelay" if x.args.first().is_some_and(|v| v == "on") => {
                    notes.push(format!("nginx: {}  ({}): ucp-lb always sets TCP_NODELAY", x.text(), x.at()));
                }
                _ => {
                    let n = self.not_carried(x, "no ucp-lb equivalent");
                    notes.push(n);
                }
            }
        }
        let Some(target) = target else {
            let n = self.not_carried(d, "a server {} without proxy_pass");
            self.head_notes.push(n);
            return Ok(());
        };
        if binds.is_empty() {
            let n = self.not_carried(d, "no listen that ucp-lb can carry");
            self.head_notes.push(n);
            return Ok(());
        }
        let [to] = target.args.as_slice() else {
            return Err(target.err("proxy_pass takes one upstream name or host:port"));
        };
        if to.contains('$') {
            let n = self.not_carried(target, "proxy_pass with variables");
            self.head_notes.push(n);
            return Ok(());
        }
        let proxy = proxy.or(stream);
        let idx = match self.pools.iter().position(|p| p.origin == *to) {
            Some(i) => i,
            None => {
                if crate::config::parse_host_port(to).is_err() {
                    return Err(target.err(format!(
                        "proxy_pass {to}: no upstream \"{to}\" and not host:port (nginx refuses this too)"
                    )));
                }
                let name = self.pool_name(&format!("direct_{to}"));
                let server = Server::new(to, Vec::new());
                self.pools.push(Pool {
                    name,
                    origin: to.clone(),
                    at: target.at(),
                    comments: Vec::new(),
                    balance: "round_robin",
                    servers: vec![server],
                    notes: vec![format!("nginx: proxy_pass {to} straight to one server ({})", target.at())],
                    proxy: None,
                    used_at: String::new(),
                });
                self.pools.len() - 1
            }
        };
        match &self.pools[idx].proxy {
            None => {
                self.pools[idx].proxy = Some(proxy);
                self.pools[idx].used_at = d.at();
            }
            Some(first) if *first != proxy => {
                let first_at = self.pools[idx].used_at.clone();
                let n = self.warn(
                    d,
                    format!(
                        "proxies to {to} with other proxy_* settings than the server at {first_at}; ucp-lb keeps them \
                         per pool: the first are used"
                    ),
                );
                notes.push(n);
            }
            Some(_) => {}
        }
        let pool = self.pools[idx].name.clone();
        for (i, (bind, mut comments)) in binds.into_iter().enumerate() {
            if i == 0 {
                let mut c = d.comments.clone();
                c.append(&mut comments);
                comments = c;
            }
            self.listeners.push(Listener {
                bind,
                pool: pool.clone(),
                comments,
                notes: if i == 0 { std::mem::take(&mut notes) } else { Vec::new() },
            });
        }
        Ok(())
    }

    /// The bind address of a `listen`, or None (with a note) if it cannot
    /// be carried.
    fn listen(&mut self, d: &Directive, notes: &mut Vec<String>) -> Result<Option<String>, ConvertError> {
        let Some(addr) = d.args.first() else {
            return Err(d.err("listen needs an address or port"));
        };
        for p in &d.args[1..] {
            let skip_why = match p.split('=').next().unwrap_or(p) {
                "udp" => Some("ucp-lb balances TCP only"),
                "ssl" => Some("ucp-lb passes TLS through and does not terminate it"),
                "proxy_protocol" => Some("the PROXY protocol header is not read"),
                _ => None,
            };
            if let Some(why) = skip_why {
                let n = self.not_carried(d, why);
                notes.push(n);
                return Ok(None);
            }
        }
        let bind = if addr.chars().all(|c| c.is_ascii_digit()) {
            format!("0.0.0.0:{addr}")
        } else if let Some(port) = addr.strip_prefix("*:") {
            format!("0.0.0.0:{port}")
        } else if let Some(port) = addr.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else if addr.parse::<std::net::SocketAddr>().is_ok() {
            addr.clone()
        } else {
            let n = self.not_carried(d, "ucp-lb binds IP addresses (and *, localhost), not names or unix: sockets");
            notes.push(n);
            return Ok(None);
        };
        let extra: Vec<&String> = d.args[1..].iter().collect();
        if !extra.is_empty() {
            let list: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
            let n = self.warn(
                d,
                format!(
                    "listening on {bind}; parameters not carried over: {} (ucp-lb sets backlog 1024, SO_REUSEADDR \
                     and TCP keepalive itself)",
                    list.join(" ")
                ),
            );
            notes.push(n);
        }
        Ok(Some(bind))
    }
}

/// nginx time: `30s`, `10m`, `1h30m`, `500ms`; a bare number is seconds.
fn parse_format_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("expected an nginx time like 30s, 10m or 500ms, found \"{v}\"");
    let mut total = Duration::ZERO;
    let mut rest = v;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (Duration::from_millis(1), 2),
            [b's', ..] => (Duration::from_secs(1), 1),
            [b'm', ..] => (Duration::from_secs(60), 1),
            [b'h', ..] => (Duration::from_secs(3600), 1),
            [b'd', ..] => (Duration::from_secs(86400), 1),
            [b'w', ..] => (Duration::from_secs(7 * 86400), 1),
            [] => (Duration::from_secs(1), 0),
            _ => return Err(bad()),
        };
        rest = &rest[len..];
        total += unit.checked_mul(u32::try_from(n).map_err(|_| bad())?).ok_or_else(bad)?;
    }
    Ok(total)
}

/// A TOML basic string.
fn q(s: &str) -> String {
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

fn comment_lines(out: &mut String, indent: &str, lines: &[String]) {
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

/// Converts the nginx config at `path` (and its includes).
pub fn convert(path: &Path) -> Result<Converted, ConvertError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reader = Reader { base, depth: 0, nesting: 0 };
    let top = reader.read_file(path, None)?;
    let mut c = Converter::default();
    let mut outside: Vec<String> = Vec::new();
    let mut streams = Vec::new();
    for d in &top {
        if d.name == "stream" && d.block.is_some() {
            streams.push(d);
        } else if !outside.contains(&d.name) {
            outside.push(d.name.clone());
        }
    }
    if streams.is_empty() {
        return Err(ConvertError {
            file: path.display().to_string(),
            line: 0,
            msg: "no stream {} block: nothing for a TCP load balancer to carry over".into(),
        });
    }
    for s in &streams {
        let block = s.block.as_deref().unwrap_or_default();
        // Stream-level proxy_* apply to every server {} whatever their order.
        let mut stream_proxy = Proxy::default();
        for d in block {
            if !matches!(d.name.as_str(), "upstream" | "server") && !c.proxy_directive(d, &mut stream_proxy)? {
                let n = c.not_carried(d, "no ucp-lb equivalent");
                c.head_notes.push(n);
            }
        }
        for d in block.iter().filter(|d| d.name == "upstream") {
            if d.block.is_none() {
                return Err(d.err("upstream needs a { } block"));
            }
            c.upstream(d)?;
        }
        for d in block.iter().filter(|d| d.name == "server") {
            if d.block.is_none() {
                return Err(d.err("server needs a { } block here"));
            }
            c.server_block(d, &stream_proxy)?;
        }
    }
    if c.listeners.is_empty() {
        return Err(ConvertError {
            file: path.display().to_string(),
            line: 0,
            msg: "no stream server {} with a listen and proxy_pass that ucp-lb can carry".into(),
        });
    }
    let toml = write(&c, path, &outside);
    // What is printed must pass `ucp-lb check`: parse it with the real parser.
    if let Err(e) = crate::config::parse(&toml, "converted") {
        return Err(ConvertError {
            file: path.display().to_string(),
            line: 0,
            msg: format!("the converted config does not pass check (a converter bug, please report):\n{e}"),
        });
    }
    Ok(Converted { toml, warnings: c.warnings })
}

fn write(c: &Converter, path: &Path, outside: &[String]) -> String {
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

fn nonzero(d: Duration) -> String {
    // lb.toml reads "0" as "switched off": nginx's 0 means "at once".
    if d.is_zero() { "1ms".into() } else { format_duration(d) }
}

fn default_note(is_default: bool) -> &'static str {
    if is_default { "  # nginx's default" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s, "t").unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn tokenizes_like_nginx() {
        use Tok::*;
        let w = |s: &str| Word(s.into());
        assert_eq!(toks("a b;"), vec![w("a"), w("b"), Semi]);
        assert_eq!(toks("a \"b c\" 'd;e';"), vec![w("a"), w("b c"), w("d;e"), Semi]);
        assert_eq!(toks("s {x;} # c"), vec![w("s"), Open, w("x"), Semi, Close, Comment(" c".into())]);
        assert_eq!(toks("a b#c;"), vec![w("a"), w("b#c"), Semi]);
        assert_eq!(toks("hash ${remote_addr}x;"), vec![w("hash"), w("${remote_addr}x"), Semi]);
        assert!(tokenize("a \"b;", "t").unwrap_err().to_string().contains("t:1: unexpected end of file"));
        assert!(tokenize("a \"b\"c;", "t").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.conf");
        std::fs::write(&path, "a {".repeat(100_000)).unwrap();
        let e = convert(&path).unwrap_err();
        assert!(e.msg.contains("nested more than 64 deep"), "{e}");
    }

    #[test]
    fn nginx_times() {
        assert_eq!(parse_format_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_format_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_format_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_format_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_format_duration("5x").is_err());
        assert!(parse_format_duration("").is_err());
        assert!(parse_format_duration("s").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.conf", "a.conf"));
        assert!(!wildcard("*.conf", "a.conf.bak"));
        assert!(wildcard("s?.conf", "s1.conf"));
        assert!(wildcard("[a-c]x", "bx"));
        assert!(!wildcard("[!a-c]x", "bx"));
    }
}
