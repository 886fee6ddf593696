//! The HTML status page in a real browser: headless Chromium loads `/` and
//! the rendered DOM must show every server with its state and reason. A
//! screenshot is saved to target/status-page.png (and a phone-sized one).
//! Skipped without Chromium, except under CI=true, where .ci/run installs it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::standin::{Manager, TestCa};
use common::*;

fn chromium() -> Option<PathBuf> {
    external_tool(&["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"], "chromium")
}

/// Runs headless Chromium with `args` then `url`; its stdout.
fn browse(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_server_with_its_state_and_reason() {
    let Some(bin) = chromium() else { return };
    let ca = TestCa::new("test CA").unwrap();
    let up = Manager::start("manager-01", loopback(), &ca).await.unwrap();
    let failing = Manager::start("manager-02", loopback(), &ca).await.unwrap();
    let drained = Manager::start("manager-03", loopback(), &ca).await.unwrap();
    failing.set_healthy(false);
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nservers = [\"{}\", \"{}\", {{ address = \"{}\", state = \"drain\" }}]\n\
         [pool.ucp.health]\ninterval = \"200ms\"\ntimeout = \"1s\"\n",
        up.addr, failing.addr, drained.addr
    );
    let lb = start_lb(&toml).await;
    eventually("manager-02 down", || server(&lb, failing.addr).check.is_some_and(|c| c.state == "down")).await;
    let url = format!("http://{}/", lb.admin_addr().unwrap());
    let profile = tempfile::tempdir().unwrap();

    let dom = tokio::task::spawn_blocking({
        let (bin, p, url) = (bin.clone(), profile.path().to_path_buf(), url.clone());
        move || browse(&bin, &p, &["--dump-dom"], &url)
    })
    .await
    .unwrap();
    let row = |addr: SocketAddr| -> String {
        let start = dom.find(&format!("data-addr=\"{addr}\"")).unwrap_or_else(|| panic!("no row for {addr} in {dom}"));
        let end = dom[start..].find("</tr>").map(|e| start + e).unwrap_or(dom.len());
        dom[start..end].to_owned()
    };
    let r1 = row(up.addr);
    assert!(r1.contains(">up<") && r1.contains("check ok") && r1.contains(">yes<"), "{r1}");
    let r2 = row(failing.addr);
    assert!(
        r2.contains("check bad") && r2.contains(">down<") && r2.contains("status 500") && r2.contains(">no<"),
        "{r2}"
    );
    let r3 = row(drained.addr);
    assert!(r3.contains("state warn") && r3.contains(">drain<") && r3.contains(">no<"), "{r3}");
    assert!(dom.contains("id=\"health\"") && dom.contains(">serving<"), "{dom}");
    assert!(dom.contains("Pool ucp"));

    // Screenshots for people: a desktop and a phone.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    for (name, size) in [("status-page.png", "1280,760"), ("status-page-phone.png", "390,844")] {
        let shot = target.join(name);
        let _ = std::fs::remove_file(&shot);
        let (bin, p, url) = (bin.clone(), profile.path().to_path_buf(), url.clone());
        let arg_shot = format!("--screenshot={}", shot.display());
        let arg_size = format!("--window-size={size}");
        tokio::task::spawn_blocking(move || browse(&bin, &p, &[&arg_shot, &arg_size, "--hide-scrollbars"], &url))
            .await
            .unwrap();
        assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "screenshot {name} saved");
    }
}
