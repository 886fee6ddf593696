//! Inputs the fuzzers (fuzz/) once crashed on, kept and checked with the
//! same rules as the fuzz targets, on stable Rust: each file in
//! tests/fuzz_regressions/TARGET/.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// fuzz/fuzz_targets/config.rs: a config or errors, each on one line that
/// names the file.
#[test]
fn config_inputs_give_one_line_errors_naming_the_file() {
    let cases = inputs("config");
    assert!(!cases.is_empty(), "no regression inputs found");
    for (name, data) in cases {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        if let Err(e) = ucp_lb::config::parse(text, "fuzz.toml") {
            let msg = e.to_string();
            assert!(msg.lines().all(|l| l.starts_with("fuzz.toml")), "{name}: an error line without the file:\n{msg}");
            assert_eq!(msg.lines().count(), e.0.len(), "{name}: one line per error:\n{msg}");
        }
    }
}

/// fuzz/fuzz_targets/proxy_header.rs, over its seeds and any input kept in
/// tests/fuzz_regressions/proxy_header/: the verdict does not depend on
/// how the bytes arrive, and a complete header lies within them and the
/// bound.
#[test]
fn proxy_header_inputs_give_one_verdict_however_they_arrive() {
    use ucp_lb::wire::proxy_header::{Parsed, V1_MAX, parse};
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/proxy_header");
    let mut cases = inputs("proxy_header");
    for e in std::fs::read_dir(seeds).unwrap().filter_map(Result::ok) {
        cases.push((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()));
    }
    assert!(cases.len() >= 5, "no seeds found");
    for (name, data) in cases {
        let Some((&first, bytes)) = data.split_first() else { continue };
        let step = usize::from(first & 0x1f).max(1);
        let limit = [232, 4096, 65_551][usize::from(first >> 5) % 3];
        let at_once = parse(bytes, limit);
        let mut needs = Vec::new();
        for end in (0..bytes.len()).step_by(step).chain([bytes.len()]) {
            match parse(&bytes[..end], limit) {
                Ok(Parsed::Partial(need)) => {
                    assert!(need > end, "{name}: needs {need} with {end}");
                    needs.push(need);
                }
                verdict => {
                    assert_eq!(verdict, at_once, "{name}: the verdict at {end} bytes");
                    break;
                }
            }
        }
        if let Ok(Parsed::Complete(h)) = &at_once {
            assert!(h.len <= bytes.len() && h.len <= limit.max(V1_MAX), "{name}");
            assert!(needs.iter().all(|&n| n <= h.len), "{name}: needed more than the header: {needs:?}");
            assert_eq!(parse(&bytes[..h.len], limit), at_once, "{name}");
        }
    }
}
