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

mod admission;
mod convert;
mod logs;
mod read;
mod routes;
mod server;
mod upstream;
mod write;

use std::path::Path;

use convert::{Admission, Converter, Proxy};
use read::Reader;

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
        // Formats first: an access_log names one.
        for d in block.iter().filter(|d| d.name == "log_format") {
            c.log_format(d)?;
        }
        // Stream-level proxy_* and access_log apply to every server {}
        // whatever their order.
        let mut stream_proxy = Proxy::default();
        let mut stream_admission = Admission::default();
        for d in block.iter().filter(|d| d.name == "limit_conn_zone") {
            c.limit_conn_zone(d)?;
        }
        for d in block.iter().filter(|d| d.name == "map" && d.block.is_some()) {
            let [from, to] = d.args.as_slice() else { return Err(d.err("map takes a source and a variable")) };
            c.maps.insert(to.clone(), (from.clone(), d.clone()));
        }
        for d in block {
            if matches!(d.name.as_str(), "log_format" | "limit_conn_zone") || (d.name == "map" && d.block.is_some()) {
                continue;
            }
            if d.name == "access_log" {
                let mut notes = Vec::new();
                c.stream_log = Some(c.access_log(d, &mut notes)?);
                c.head_notes.append(&mut notes);
                continue;
            }
            if !matches!(d.name.as_str(), "upstream" | "server")
                && !c.proxy_directive(d, &mut stream_proxy)?
                && !c.admission_directive(d, &mut stream_admission)?
            {
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
            c.server_block(d, &stream_proxy, &stream_admission)?;
        }
    }
    if c.listeners.is_empty() {
        return Err(ConvertError {
            file: path.display().to_string(),
            line: 0,
            msg: "no stream server {} with a listen and proxy_pass that ucp-lb can carry".into(),
        });
    }
    let toml = write::write(&c, path, &outside);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.conf");
        std::fs::write(&path, "a {".repeat(100_000)).unwrap();
        let e = convert(&path).unwrap_err();
        assert!(e.msg.contains("nested more than 64 deep"), "{e}");
    }
}
