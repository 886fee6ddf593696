//! Walking src/ for the tests that read the code as text (tests/modules.rs,
//! tests/shape.rs). Kept apart from tests/common, which those tests do not
//! need (it would build the stand-in managers and TLS helpers for each).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, depth first.
pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
