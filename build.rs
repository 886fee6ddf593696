//! Build facts for `ucp-lb --version`, `/status` and `ucp_lb_build_info`:
//! the commit, the build date, the compiler and the target. Each is
//! "unknown" where it cannot be had (no git, no .git in a source tarball);
//! SOURCE_DATE_EPOCH, when set, gives a reproducible date.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

#[path = "src/civil.rs"]
mod civil;

fn main() {
    // HEAD names the branch; the branch's ref (or packed-refs) moves with
    // each commit; the index with each add and commit.
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/packed-refs");
    println!("cargo:rerun-if-changed=.git/index");
    if let Some(r) =
        std::fs::read_to_string(".git/HEAD").ok().and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
    {
        println!("cargo:rerun-if-changed=.git/{r}");
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    let commit = if dirty && commit != "unknown" { format!("{commit}-modified") } else { commit };
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = output(&rustc, &["-V"]).unwrap_or_else(|| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=UCP_LB_COMMIT={commit}");
    let (y, m, d, ..) = civil::civil(secs);
    println!("cargo:rustc-env=UCP_LB_BUILD_DATE={y:04}-{m:02}-{d:02}");
    println!("cargo:rustc-env=UCP_LB_RUSTC={rustc}");
    println!("cargo:rustc-env=UCP_LB_TARGET={target}");
    println!("cargo:rustc-env=UCP_LB_PROFILE={profile}");
}
