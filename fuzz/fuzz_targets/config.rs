//! lb.toml parsing and validation: any text gives a config or errors that
//! name the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = ucp_lb::config::parse(text, "fuzz.toml") {
        let msg = e.to_string();
        assert!(msg.lines().all(|l| l.starts_with("fuzz.toml")), "an error line without the file: {msg}");
    }
});
