//! What this binary is: version, commit, build date, compiler, target
//! (from `build.rs`), for `--version`, `/status` and `ucp_lb_build_info`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
    pub date: &'static str,
    pub rustc: &'static str,
    pub target: &'static str,
    pub profile: &'static str,
}

pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("UCP_LB_COMMIT"),
    date: env!("UCP_LB_BUILD_DATE"),
    rustc: env!("UCP_LB_RUSTC"),
    target: env!("UCP_LB_TARGET"),
    profile: env!("UCP_LB_PROFILE"),
};

impl BuildInfo {
    /// One line: `ucp-lb 0.1.0 (commit 3efa3f1, built 2026-11-30, rustc 1.95.0 (...), x86_64-unknown-linux-gnu)`.
    pub fn line(&self) -> String {
        format!(
            "ucp-lb {} (commit {}, built {}, {}, {})",
            self.version, self.commit, self.date, self.rustc, self.target
        )
    }
}
