//! The shape of src/: no file over 800 lines, no function over 100 lines
//! outside tests (issue 34). A file past 800 lines usually owns two
//! things, a function past 100 does several steps that each want a name.
//!
//! A function's length runs from its `fn` line to the line of its closing
//! brace. Braces are counted in the code only: strings (raw ones too),
//! char literals and comments are blanked first. `#[cfg(test)]` items (the
//! `tests` module, a test-only helper) and files that are only a test
//! module (`#[cfg(test)] mod tests;`) are left out of the function count.

mod tree;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tree::rust_files;

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

#[test]
fn no_file_over_800_lines_and_no_function_over_100() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut test_only = BTreeSet::new();
    let mut blanked = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let code = blank(&text);
        for name in test_modules(&code) {
            let dir = module_dir(f);
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(&name).join("mod.rs"));
        }
        blanked.push((f, text.lines().count(), code));
    }
    let mut found = Vec::new();
    for (f, lines, code) in &blanked {
        let rel = f.strip_prefix(&src).unwrap().display();
        if *lines > MAX_FILE_LINES {
            found.push(format!("src/{rel}: {lines} lines (at most {MAX_FILE_LINES})"));
        }
        if test_only.contains(*f) {
            continue;
        }
        for (name, line, len) in long_functions(code) {
            found.push(format!("src/{rel}:{line}: fn {name}: {len} lines (at most {MAX_FN_LINES})"));
        }
    }
    assert!(found.is_empty(), "split these on their seams:\n{}", found.join("\n"));
}

/// Where the files of `f`'s child modules live: beside a `mod.rs`,
/// `lib.rs` or `main.rs`, else in the folder named after the file.
fn module_dir(f: &Path) -> PathBuf {
    let parent = f.parent().unwrap_or(Path::new(""));
    match f.file_stem().and_then(|s| s.to_str()) {
        Some("mod" | "lib" | "main") | None => parent.to_path_buf(),
        Some(stem) => parent.join(stem),
    }
}

/// `text` with every string, char literal and comment replaced by spaces
/// (newlines kept, so line numbers stay), leaving only code.
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = c.clone();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let start = i;
        let at = |j: usize| c.get(j).copied().unwrap_or('\0');
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if raw_string_start(&c, i, ident) {
            // r"..", r#".."#, br#".."#: no escapes, ends at `"` and as many `#`.
            while c[i] != 'r' {
                i += 1;
            }
            i += 1;
            let mut hashes = 0;
            while at(i) == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                i += 1;
            }
            i = (i + 1 + hashes).min(c.len());
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(c.len());
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            // '\n', '\'', '\u{7f}': up to the next quote after the escape.
            i += 3;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i = (i + 1).min(c.len());
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            i += 3;
        } else {
            // Code, a lifetime or a label ('a, 'static, 'outer:) included.
            i += 1;
            continue;
        }
        for ch in &mut out[start..i.min(c.len())] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    }
    out.into_iter().collect()
}

/// A raw string (`r"`, `r#"`, `br"`, `br#"`) starts at `i`.
fn raw_string_start(c: &[char], i: usize, ident: impl Fn(char) -> bool) -> bool {
    if i > 0 && ident(c[i - 1]) {
        return false;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return false;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    c.get(j) == Some(&'"')
}

/// Names of the `#[cfg(test)] mod NAME;` declared in `code` (test modules
/// in files of their own).
fn test_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("#[cfg(test)]") {
        let rest = code[i + "#[cfg(test)]".len()..].trim_start();
        let Some(rest) = rest.strip_prefix("mod ") else { continue };
        let name: String = rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if rest.trim_start()[name.len()..].trim_start().starts_with(';') {
            out.push(name);
        }
    }
    out
}

/// From byte `from` in `code`, the end of the item or signature that
/// starts there: `Some(i)` of its body's `{` (the first outside `()`
/// and `[]`), or `None` at a `;` first (no body) or at the end.
fn body_open(code: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, &b) in code.iter().enumerate().skip(from) {
        match b {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b'{' if depth == 0 => return Some(i),
            b';' if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// The `}` that closes the `{` at `open`.
fn body_close(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &b) in code.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The byte ranges of `#[cfg(test)]` items (up to the end of their body,
/// or their `;`).
fn test_items(code: &str) -> Vec<(usize, usize)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for (i, _) in code.match_indices("#[cfg(test)]") {
        let after = i + "#[cfg(test)]".len();
        let end = match body_open(bytes, after) {
            Some(open) => body_close(bytes, open),
            None => code[after..].find(';').map_or(code.len(), |j| after + j),
        };
        out.push((i, end));
    }
    out
}

/// Every function outside `#[cfg(test)]` items longer than
/// `MAX_FN_LINES`: (name, line of `fn`, length in lines).
fn long_functions(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let tests = test_items(code);
    let line_of = |i: usize| code[..i].matches('\n').count() + 1;
    let mut out = Vec::new();
    for (i, _) in code.match_indices("fn") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        // `fn name`: a function, not `fn(u32)` (a pointer type) or `fn_x`.
        let rest = &code[i + 2..];
        let name: String = rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.is_empty() || !rest.starts_with(char::is_whitespace) || tests.iter().any(|&(s, e)| s <= i && i < e) {
            continue;
        }
        let Some(open) = body_open(bytes, i) else { continue };
        let (first, last) = (line_of(i), line_of(body_close(bytes, open)));
        let len = last - first + 1;
        if len > MAX_FN_LINES {
            out.push((name, first, len));
        }
    }
    out
}

#[test]
fn the_scanner_sees_only_code() {
    let text = "fn a() {\n    let s = \"}\"; let c = '{'; let e = '\\''; // }\n    let r = r#\"}\"#; /* } /* } */ } */\n    let l: &'static str = b\"{\"; 'outer: loop { break 'outer; }\n}\n";
    let code = blank(text);
    assert_eq!(code.lines().count(), text.lines().count(), "lines kept");
    assert_eq!(code.matches('{').count(), 2, "{code}");
    assert_eq!(code.matches('}').count(), 2, "{code}");
    assert!(code.contains("'static") && code.contains("'outer"), "lifetimes and labels stay: {code}");
}

#[test]
fn the_scanner_measures_functions_and_skips_tests() {
    let body = "    x();\n".repeat(MAX_FN_LINES - 1);
    let long = format!("fn long() {{\n{body}}}\n");
    let text = format!(
        "trait T {{ fn decl(&self) -> [u8; 2]; }}\nfn short() -> [u8; 2] {{ [0; 2] }}\n{long}\
         #[cfg(test)]\nmod tests {{\n    {long}}}\n"
    );
    let found = long_functions(&blank(&text));
    assert_eq!(found, [("long".to_owned(), 3, MAX_FN_LINES + 1)]);
    assert_eq!(test_modules("#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod inline {}\n"), ["tests"]);
}
