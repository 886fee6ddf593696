//! The HTML status page in a real browser: headless Chromium loads `/` and
//! the rendered DOM must show every server's state in a phrase, what
//! happened (an outage and its end), and the traffic picture. A screenshot
//! is saved to target/status-page.png (and a phone-sized one).
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
async fn the_status_page_shows_each_server_in_a_phrase_and_what_happened() {
    let Some(bin) = chromium() else { return };
    let ca = TestCa::new("test CA").unwrap();
    let up = Manager::start("manager-01", loopback(), &ca).await.unwrap();
    let outage = Manager::start("manager-02", loopback(), &ca).await.unwrap();
    let drained = Manager::start("manager-03", loopback(), &ca).await.unwrap();
    let failing = Manager::start("manager-04", loopback(), &ca).await.unwrap();
    failing.set_healthy(false);
    let servers: Vec<String> = [&up, &outage, &drained, &failing]
        .iter()
        .map(|m| {
            let drain = if m.name == "manager-03" { ", state = \"drain\"" } else { "" };
            format!("{{ address = \"{}\", name = \"{}\"{drain} }}", m.addr, m.name)
        })
        .collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nservers = [{}]\n[pool.ucp.health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        servers.join(", ")
    );
    let lb = start_lb(&toml).await;
    // An outage in the history: manager-02 fails its check, then recovers.
    outage.set_healthy(false);
    eventually("manager-02 down", || server(&lb, outage.addr).check.is_some_and(|c| c.state == "down")).await;
    outage.set_healthy(true);
    eventually("manager-02 back", || server(&lb, outage.addr).check.is_some_and(|c| c.state == "up")).await;
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
    let r = row(up.addr);
    assert!(r.contains("manager-01") && r.contains("class=\"state ok\">in<") && r.contains("check up"), "{r}");
    let r = row(outage.addr);
    assert!(r.contains("class=\"state ok\">in<"), "recovered: {r}");
    let r = row(drained.addr);
    assert!(r.contains("class=\"state warn\">draining, 0 open<") && r.contains("set drain"), "{r}");
    let r = row(failing.addr);
    assert!(r.contains("class=\"state bad\">out: status 500 for ") && r.contains("check down since "), "{r}");
    assert!(dom.contains(">2 of 4 eligible<"), "{dom}");
    assert!(dom.contains("id=\"health\"") && dom.contains(">serving<"), "{dom}");
    // What happened, newest first: manager-02 down with its reason, then up.
    let events = &dom[dom.find("id=\"events\"").expect("the event list")..];
    let down = events
        .find(&format!("<td>ucp</td><td>manager-02 ({})</td><td>status 500", outage.addr))
        .expect("manager-02's outage listed");
    let back = events
        .find(&format!("<td>ucp</td><td>manager-02 ({})</td><td>check passes", outage.addr))
        .expect("its recovery listed");
    assert!(back < down, "newest first");
    // The traffic picture, drawn on the server, with the outage marked.
    let svg_at =
        dom.find("<svg class=\"traffic\" data-pool=\"ucp\" width=\"600\" height=\"90\"").expect("an SVG sized 600x90");
    let svg = &dom[svg_at..dom[svg_at..].find("</svg>").map_or(dom.len(), |e| svg_at + e)];
    assert!(svg.contains("class=\"event\"") && svg.contains("polyline"), "{svg}");

    // Screenshots for people: a desktop and a phone.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    for (name, size) in [("status-page.png", "1280,1000"), ("status-page-phone.png", "390,844")] {
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
