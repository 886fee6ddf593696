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
    pinned(env!("CARGO_BIN_EXE_ucp-lb"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the ucp-lb binary cargo built for this bench starts")
}
