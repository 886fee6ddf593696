//! `ucp-lb convert-nginx`: an nginx config's `stream {}` block as lb.toml.
//!
//! Three steps: read the files into a tree of directives (nginx's own
//! tokenizing rules: words, quotes, `;`, `{`, `}`, `#` comments, `include`
//! with globs), turn the `upstream` and `server` blocks into pools and
//! listeners with nginx's defaults written out, then write lb.toml and parse
//! it with ucp-lb's own config parser, so what is printed always passes
//! `ucp-lb check`. Everything outside `stream {}` is ignored; every
//! directive inside it that cannot be carried over becomes a comment in the
//! output and a warning; a listener that cannot be, an error at the top
//! (the output is still printed, and says so); those that make no
//! difference in ucp-lb, one note naming them all. Every hard error of a
//! file is reported in one run (`health` reads nginx Plus `health_check`).

mod admission;
mod convert;
mod health;
mod logs;
mod read;
mod realip;
mod routes;
mod server;
mod upstream;
mod write;

use std::path::Path;

use convert::{Admission, Converter, Proxy};
use read::Reader;

/// A file that cannot be read, or syntax that cannot be: `file:line: what`
/// (`file: what` when it is about the whole file, `line` 0).
#[derive(Debug)]
pub struct ConvertError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.msg),
            n => write!(f, "{}:{n}: {}", self.file, self.msg),
        }
    }
}

impl std::error::Error for ConvertError {}

/// Every hard error of one run, in the file's order: one per line.
#[derive(Debug)]
pub struct ConvertErrors(pub Vec<ConvertError>);

impl std::fmt::Display for ConvertErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConvertErrors {}

impl From<ConvertError> for ConvertErrors {
    fn from(e: ConvertError) -> Self {
        ConvertErrors(vec![e])
    }
}

/// What `convert` gives back: the lb.toml text; the listeners it could not
/// carry (an error each: the config converted is missing them); one
/// warning per directive it could not carry over (also written into the
/// text); and notes, such as the one line naming the directives ignored
/// because they make no difference.
#[derive(Debug)]
pub struct Converted {
    pub toml: String,
    pub lost_listeners: Vec<String>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// Converts the nginx config at `path` (and its includes). A syntax error
/// stops the reading; every other hard error of the file is reported, all
/// in one run.
pub fn convert(path: &Path) -> Result<Converted, ConvertErrors> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reader = Reader { base, depth: 0, nesting: 0 };
    let top = reader.read_file(path, None)?;
    let whole = |msg: &str| ConvertError { file: path.display().to_string(), line: 0, msg: msg.to_owned() };
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
        return Err(whole("no stream {} block: nothing for a TCP load balancer to carry over").into());
    }
    for s in &streams {
        stream_block(&mut c, s.block.as_deref().unwrap_or_default());
    }
    if !c.errors.is_empty() {
        return Err(ConvertErrors(std::mem::take(&mut c.errors)));
    }
    if c.listeners.is_empty() {
        let mut errors: Vec<ConvertError> = Vec::new();
        errors.push(whole("no stream server {} with a listen and proxy_pass that ucp-lb can carry"));
        errors.extend(c.lost.iter().map(|l| whole(&format!("  {l}"))));
        return Err(ConvertErrors(errors));
    }
    c.unshared_zones();
    let toml = write::write(&c, path, &outside);
    // What is printed must pass `ucp-lb check`: parse it with the real parser.
    if let Err(e) = crate::config::parse(&toml, "converted") {
        return Err(
            whole(&format!("the converted config does not pass check (a converter bug, please report):\n{e}")).into()
        );
    }
    let mut notes = Vec::new();
    if !c.ignored.is_empty() {
        notes.push(format!("ignored, they make no difference in ucp-lb: {}", c.ignored.join("; ")));
    }
    notes.append(&mut c.notes);
    Ok(Converted { toml, lost_listeners: c.lost, warnings: c.warnings, notes })
}

/// One `stream {}` block into `c`; its hard errors are kept in `c.errors`.
fn stream_block(c: &mut Converter, block: &[read::Directive]) {
    // Formats first: an access_log names one.
    for d in block.iter().filter(|d| d.name == "log_format") {
        let r = c.log_format(d);
        c.keep(r);
    }
    // Stream-level proxy_* and access_log apply to every server {}
    // whatever their order.
    let mut stream_proxy = Proxy::default();
    let mut stream_admission = Admission::default();
    for d in block.iter().filter(|d| d.name == "limit_conn_zone") {
        let r = c.limit_conn_zone(d);
        c.keep(r);
    }
    for d in block.iter().filter(|d| d.block.is_some() && matches!(d.name.as_str(), "map" | "match")) {
        if d.name == "match" {
            match d.args.as_slice() {
                [name] => {
                    c.matches.insert(name.clone(), d.clone());
                }
                _ => c.errors.push(d.err("match takes one name")),
            }
            continue;
        }
        match d.args.as_slice() {
            [from, to] => {
                c.maps.insert(to.clone(), (from.clone(), d.clone()));
            }
            _ => c.errors.push(d.err("map takes a source and a variable")),
        }
    }
    for d in block {
        if matches!(d.name.as_str(), "log_format" | "limit_conn_zone")
            || (matches!(d.name.as_str(), "map" | "match") && d.block.is_some())
        {
            continue;
        }
        if d.name == "access_log" {
            let mut notes = Vec::new();
            match c.access_log(d, &mut notes) {
                Ok(l) => c.stream_log = Some(l),
                Err(e) => c.errors.push(e),
            }
            c.head_notes.append(&mut notes);
            continue;
        }
        if matches!(d.name.as_str(), "upstream" | "server") {
            continue;
        }
        let r = c.stream_directive(d, &mut stream_proxy, &mut stream_admission);
        c.keep(r);
    }
    for d in block.iter().filter(|d| d.name == "upstream") {
        if d.block.is_none() {
            c.errors.push(d.err("upstream needs a { } block"));
            continue;
        }
        let r = c.upstream(d);
        c.keep(r);
    }
    for d in block.iter().filter(|d| d.name == "server") {
        if d.block.is_none() {
            c.errors.push(d.err("server needs a { } block here"));
            continue;
        }
        let r = c.server_block(d, &stream_proxy, &stream_admission);
        c.keep(r);
    }
    c.unused_matches();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lb.toml written for the nginx config `conf`, as a build with
    /// the PROXY listener keys writes it (without the check by the
    /// parser, which a build without them would refuse).
    fn written(conf: &str) -> (String, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.conf");
        std::fs::write(&path, conf).unwrap();
        let mut reader = Reader { base: dir.path().to_path_buf(), depth: 0, nesting: 0 };
        let top = reader.read_file(&path, None).unwrap();
        let mut c = Converter::default();
        for d in top.iter().filter(|d| d.name == "stream") {
            stream_block(&mut c, d.block.as_deref().unwrap_or_default());
        }
        assert!(c.errors.is_empty() && c.lost.is_empty(), "{:?} {:?}", c.errors, c.lost);
        (write::write(&c, &path, &[]), c.ignored)
    }

    /// The `[[listener]]` table binding `bind`, up to the next table.
    fn table<'a>(toml: &'a str, bind: &str) -> &'a str {
        let at = toml.find(&format!("bind = \"{bind}\"")).unwrap_or_else(|| panic!("no {bind} in\n{toml}"));
        let rest = &toml[at..];
        &rest[..rest.find("\n[").unwrap_or(rest.len())]
    }

    #[test]
    fn proxy_protocol_listeners_and_their_trusted_sources_as_nginx_scopes_them() {
        let (toml, ignored) = written(
            "stream {\n  set_real_ip_from 10.0.0.0/8;\n  proxy_protocol_timeout 10s;\n\
             \x20 upstream u { server 10.0.0.1:8443; }\n  upstream w { server 10.0.0.2:80; }\n\
             \x20 server { listen 443 proxy_protocol; proxy_pass u; }\n\
             \x20 server { listen 444 proxy_protocol; set_real_ip_from 192.0.2.7; set_real_ip_from 2001:db8::/32;\n\
             \x20   proxy_protocol_timeout 3s; proxy_pass u; }\n\
             \x20 server { listen 80; set_real_ip_from 192.0.2.8; proxy_pass w; proxy_protocol on; }\n}\n",
        );
        // The stream level's, inherited.
        let l443 = table(&toml, "0.0.0.0:443");
        assert!(l443.contains("proxy_protocol = true"), "{l443}");
        assert!(l443.contains("real_ip_from = [\"10.0.0.0/8\"]  # nginx set_real_ip_from"), "{l443}");
        assert!(l443.contains("proxy_protocol_timeout = \"10s\"\n"), "{l443}");
        // The server's own replace them, as nginx merges them.
        let l444 = table(&toml, "0.0.0.0:444");
        assert!(l444.contains("real_ip_from = [\"192.0.2.7\", \"2001:db8::/32\"]"), "{l444}");
        assert!(l444.contains("proxy_protocol_timeout = \"3s\""), "{l444}");
        // No PROXY listener: none of them, and the server's own said.
        let l80 = table(&toml, "0.0.0.0:80");
        assert!(!l80.contains("proxy_protocol") && !l80.contains("real_ip_from ="), "{l80}");
        assert!(ignored.iter().any(|i| i.contains("no listen ... proxy_protocol here")), "{ignored:?}");
        // proxy_protocol on: nginx sends v1.
        let w = &toml[toml.find("[pool.w]").unwrap()..];
        assert!(w.contains("send_proxy_protocol = \"v1\"  # nginx proxy_protocol on"), "{w}");
        let u = &toml[toml.find("[pool.u]").unwrap()..toml.find("[pool.w]").unwrap()];
        assert!(!u.contains("send_proxy_protocol"), "{u}");
    }

    /// A server's `set_real_ip_from` that cannot be carried (a host name)
    /// still replaces the stream's list, as in nginx: the converted
    /// listener trusts no source, never the stream's 10.0.0.0/8 (found by
    /// the new-operator trial: it trusted more than nginx did).
    #[test]
    fn a_servers_own_list_replaces_the_streams_even_when_it_cannot_be_carried() {
        let (toml, _) = written(
            "stream {\n  set_real_ip_from 10.0.0.0/8;\n  upstream u { server 10.0.0.1:8443; }\n\
             \x20 server { listen 445 proxy_protocol; set_real_ip_from lb.example.com; proxy_pass u; }\n}\n",
        );
        let l = table(&toml, "0.0.0.0:445");
        assert!(l.contains("proxy_protocol = true") && !l.contains("10.0.0.0/8"), "{l}");
    }

    #[test]
    fn a_proxy_listener_without_set_real_ip_from_believes_no_header_and_gets_nginxs_timeout() {
        let (toml, _) = written(
            "stream {\n  upstream u { server 10.0.0.1:8443; }\n  server { listen 443 proxy_protocol; proxy_pass u; }\n}\n",
        );
        let l = table(&toml, "0.0.0.0:443");
        assert!(l.contains("proxy_protocol = true") && !l.contains("real_ip_from ="), "{l}");
        assert!(l.contains("# no set_real_ip_from: the header's address is not believed"), "{l}");
        assert!(l.contains("proxy_protocol_timeout = \"30s\"  # nginx's default"), "{l}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.conf");
        std::fs::write(&path, "a {".repeat(100_000)).unwrap();
        let e = convert(&path).unwrap_err().to_string();
        assert!(e.contains("nested more than 64 deep"), "{e}");
    }
}
