//! Reading nginx config files into a tree of directives, with nginx's own
//! tokenizing rules (words, quotes, `;`, `{`, `}`, `#` comments) and
//! `include` with globs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConvertError;

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone)]
pub(super) struct Directive {
    pub(super) name: String,
    pub(super) args: Vec<String>,
    pub(super) block: Option<Vec<Directive>>,
    pub(super) file: Arc<str>,
    pub(super) line: usize,
    /// `#` comment lines just above it, without the `#`.
    pub(super) comments: Vec<String>,
}

impl Directive {
    pub(super) fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// The directive as written, on one line.
    pub(super) fn text(&self) -> String {
        let mut s = self.name.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        if self.block.is_some() { s + " { ... }" } else { s + ";" }
    }

    pub(super) fn err(&self, msg: impl Into<String>) -> ConvertError {
        ConvertError { file: self.file.to_string(), line: self.line, msg: msg.into() }
    }
}

#[derive(Debug, PartialEq)]
pub(super) enum Tok {
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
pub(super) fn tokenize(text: &str, file: &str) -> Result<Vec<(Tok, usize)>, ConvertError> {
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
pub(super) struct Reader {
    /// Relative `include` paths are taken from here: the directory of the
    /// main file, nginx's conf prefix in the usual layout.
    pub(super) base: PathBuf,
    pub(super) depth: usize,
    /// Blocks open right now, across includes.
    pub(super) nesting: usize,
}

pub(super) const MAX_INCLUDE_DEPTH: usize = 16;
/// nginx configs nest three or four deep; a limit keeps hostile input from
/// exhausting the stack.
pub(super) const MAX_NESTING: usize = 64;

impl Reader {
    pub(super) fn read_file(&mut self, path: &Path, from: Option<&Directive>) -> Result<Vec<Directive>, ConvertError> {
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
    pub(super) fn parse_block(
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

    pub(super) fn include(&mut self, d: &Directive) -> Result<Vec<Directive>, ConvertError> {
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
pub(super) fn glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
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
pub(super) fn wildcard(pat: &str, name: &str) -> bool {
    pub(super) fn go(p: &[char], n: &[char]) -> bool {
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
    fn wildcards() {
        assert!(wildcard("*.conf", "a.conf"));
        assert!(!wildcard("*.conf", "a.conf.bak"));
        assert!(wildcard("s?.conf", "s1.conf"));
        assert!(wildcard("[a-c]x", "bx"));
        assert!(!wildcard("[!a-c]x", "bx"));
    }
}
