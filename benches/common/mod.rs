//! What the benches share: pinning a child process to CPU 0, and reading a
//! process's CPU time from /proc.
#![allow(dead_code)]

/// The stand-in UCP managers (shared with the demo and the tests).
#[path = "../../src/cli/standin.rs"]
pub mod standin;

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The arguments that run `program` on CPU `cpu`: under `taskset` when it
/// is there, else `program` alone.
pub fn on_cpu(cpu: u8, program: &str) -> Vec<String> {
    let mut argv = Vec::new();
    if Path::new("/usr/bin/taskset").exists() {
        argv.extend(["taskset".to_owned(), "-c".to_owned(), cpu.to_string()]);
    }
    argv.push(program.to_owned());
    argv
}

/// `name` where Debian and local installs put programs; None if missing.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The command `argv` (at least the program).
pub fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// `cmd` on CPU 0 (the load stays on CPU 1), so a proxy's figures do not
/// mix with the load generator's.
pub fn pinned(cmd: &str) -> Command {
    command(&on_cpu(0, cmd))
}

/// CPU time (user + system) of `pid` and its descendants, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<f64>().ok()).sum();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let below: f64 = children.split_whitespace().filter_map(|c| c.parse().ok()).map(cpu_secs).sum();
    ticks / 100.0 + below
}

/// The release ucp-lb on `config`, pinned, quiet.
pub fn spawn_ucp_lb(config: &Path) -> Child {
    pinned(&shipped_ucp_lb_once().display().to_string())
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the ucp-lb binary cargo built for this bench starts")
}

/// [`shipped_ucp_lb`], built once per bench run.
pub fn shipped_ucp_lb_once() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(shipped_ucp_lb)
}

/// The ucp-lb binary as shipped: `cargo build --release`, without the
/// dev-dependencies' features. (`CARGO_BIN_EXE_ucp-lb`, the one cargo
/// builds for a bench, has tokio's `test-util` on, whose every clock read
/// takes a mutex and the runtime's handle: measured by `benches/instr.rs`,
/// 21,480 against 19,869 instructions per connection and 5,552 against
/// 4,923 per exchange.) Falls back to the
/// bench's own build, and says so, when cargo cannot build it.
pub fn shipped_ucp_lb() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--bin", "ucp-lb", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output();
    let exe = out.ok().filter(|o| o.status.success()).and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| {
            (v["target"]["name"] == "ucp-lb").then(|| v["executable"].as_str().map(std::path::PathBuf::from)).flatten()
        })
    });
    exe.unwrap_or_else(|| {
        eprintln!("cargo build --release failed: measuring the bench's own build (tokio test-util on)");
        env!("CARGO_BIN_EXE_ucp-lb").into()
    })
}
