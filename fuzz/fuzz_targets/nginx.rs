//! convert-nginx: any nginx.conf gives an lb.toml that the config parser
//! accepts, or an error naming the file and line, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn file() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("nginx.conf");
        (dir, path)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).expect("write the input");
    match ucp_lb::nginx::convert(path) {
        Ok(c) => {
            if let Err(e) = ucp_lb::config::parse(&c.toml, "converted.toml") {
                panic!("convert-nginx wrote a config that does not parse:\n{e}\n---\n{}", c.toml);
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a message");
            for e in &errors.0 {
                assert!(!e.file.is_empty() && !e.msg.is_empty(), "{e}");
            }
        }
    }
});
