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
