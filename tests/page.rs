//! The HTML status page in a real browser: headless Chromium loads `/` and
//! the rendered DOM must show every server's state in a phrase, what
//! happened (an outage and its end), the traffic picture, the pools in the
//! file's order and the header's badge naming the pool with no server. The
//! page is then laid out at 1280 px and at a phone's 390 px (in a frame of
//! that width: headless Chromium's window is never under 500 px wide), and
//! each traffic chart must fill its box and nothing widen the page.
//! Screenshots are saved to target/status-page.png and
//! target/status-page-phone.png. A second page, of the real binary whose
//! probes present the cluster's admin certificate, shows what a failing
//! manager said is wrong and which servers the pool prefers
//! (target/status-page-admin-probe.png).
//! Skipped without Chromium, except under CI=true, where .ci/run installs it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::standin::{Flavor, Manager, TestCa};
use common::tls::write_bundle;
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
    // Pool "ucp" first, then "dtr" (out of name order), whose one server
    // the admin set down: the pool has no server.
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"dtr\"\n\
         [pool.ucp]\nservers = [{}]\n[pool.ucp.health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n\
         [pool.dtr]\nservers = [{{ address = \"{}\", name = \"dtr-01\", state = \"down\" }}]\n",
        servers.join(", "),
        refusing_addr()
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
    // The badge names the pool with no server and links to its section.
    let badge = &dom[dom.find("id=\"health\"").expect("the badge")..];
    let badge = &badge[..badge.find("</span>").unwrap_or(badge.len())];
    assert!(badge.contains("serving, pool <a href=\"#pool-dtr\">dtr</a> has no server"), "{badge}");
    assert!(dom.contains("<h2 id=\"pool-dtr\">Pool dtr"), "the badge's anchor: {dom}");
    // Pools in the file's order, on the page and in /status.
    let (ucp, dtr) = (dom.find("<h2 id=\"pool-ucp\">"), dom.find("<h2 id=\"pool-dtr\">"));
    assert!(ucp.is_some() && ucp < dtr, "ucp before dtr as in the file");
    let status = http_raw(lb.admin_addr().unwrap(), "GET", "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&status[status.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let names: Vec<&str> = status["pools"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["ucp", "dtr"], "/status lists the pools as the page does");
    // The stand-ins' certificates (rcgen's default notAfter, 4096-01-01).
    let r = row(up.addr);
    assert!(r.contains("class=\"cert\"><span title=\"notAfter 4096-01-01\">&gt; 10 y</span>"), "{r}");
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
    let svg_at = dom.find("<svg class=\"traffic\" data-pool=\"ucp\"").expect("an SVG");
    let svg = &dom[svg_at..dom[svg_at..].find("</svg>").map_or(dom.len(), |e| svg_at + e)];
    assert!(svg.contains("class=\"event\"") && svg.contains("polyline"), "{svg}");

    // Laid out at a desktop's and a phone's width.
    let page = http_raw(lb.admin_addr().unwrap(), "GET", "/", None).await;
    let page = &page[page.find("\r\n\r\n").unwrap() + 4..];
    for width in [1280, 390] {
        let got = layout(&bin, profile.path(), page, width).await;
        assert_eq!(got["frame"].as_f64(), Some(width as f64), "the frame is {width} px wide: {got}");
        let viewport = got["viewport"].as_f64().unwrap();
        assert!(got["page"].as_f64().unwrap() <= viewport, "nothing widens the page at {width} px: {got}");
        assert!(got["badge_right"].as_f64().unwrap() <= viewport, "the badge fits at {width} px: {got}");
        let charts = got["charts"].as_array().unwrap();
        assert_eq!(charts.len(), 2, "{got}");
        for c in charts {
            let (chart, inside) = (c["chart"].as_f64().unwrap(), c["box"].as_f64().unwrap());
            assert!((chart - inside).abs() <= 1.0, "a chart fills its box at {width} px: {c}");
            assert!(inside >= viewport - 40.0, "its box is the page's width at {width} px: {c}");
        }
        println!("at {width} px: {got}");
    }

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_a_failing_manager_told_the_admin_and_the_preferred_zone() {
    let Some(bin) = chromium() else { return };
    let (ca, admins) = (TestCa::new("manager CA").unwrap(), TestCa::new("cluster CA").unwrap());
    let mut ms = Vec::new();
    for (name, zone) in [("manager-01", "dc1"), ("manager-02", "dc1"), ("manager-03", "dc2")] {
        ms.push((Manager::start_with(Flavor::Ucp, name, loopback(), &ca, Some(&admins)).await.unwrap(), zone));
    }
    let dir = tempfile::tempdir().unwrap();
    write_bundle(&dir.path().join("bundle"), &admins, "admin");
    let list: Vec<String> = ms
        .iter()
        .map(|(m, z)| format!("{{ address = \"{}\", name = \"{}\", labels = {{ zone = \"{z}\" }} }}", m.addr, m.name))
        .collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[cluster]\nbundle = \"bundle\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nservers = [{}]\nprefer = {{ label = \"zone\", value = \"dc1\" }}\n\
         [pool.ucp.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\nclient_bundle = true\n",
        list.join(", ")
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let lb = Proc::lb(&path);
    let admin = lb.admin_addr().await;
    ms[1].0.set_failing("etcd: unhealthy");
    lb.wait_for_line("manager-02: etcd: unhealthy").await;
    let url = format!("http://{admin}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = tokio::task::spawn_blocking({
        let (bin, p, url) = (bin.clone(), profile.path().to_path_buf(), url.clone());
        move || browse(&bin, &p, &["--dump-dom"], &url)
    })
    .await
    .unwrap();
    let row = |addr: SocketAddr| -> String {
        let start = dom.find(&format!("data-addr=\"{addr}\"")).unwrap_or_else(|| panic!("no row for {addr} in {dom}"));
        dom[start..dom[start..].find("</tr>").map_or(dom.len(), |e| start + e)].to_owned()
    };
    let r = row(ms[1].0.addr);
    assert!(r.contains(r#"class="state bad">out: status 500: "manager-02: etcd: unhealthy" for "#), "{r}");
    assert!(r.contains("zone=dc1"), "its labels: {r}");
    let r = row(ms[0].0.addr);
    assert!(r.contains("manager-01 (preferred)") && r.contains(r#"class="state ok">in (preferred)<"#), "{r}");
    let r = row(ms[2].0.addr);
    assert!(r.contains(r#"class="state ok">in (backup: not preferred)<"#) && r.contains("zone=dc2"), "{r}");
    assert!(dom.contains(">prefers zone=dc1<"), "the pool's badge: {dom}");
    let events = &dom[dom.find("id=\"events\"").expect("the event list")..];
    assert!(events.contains(r#"status 500: "manager-02: etcd: unhealthy""#), "in what happened: {events}");

    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("status-page-admin-probe.png");
    let _ = std::fs::remove_file(&shot);
    let arg_shot = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || {
        browse(&bin, profile.path(), &[&arg_shot, "--window-size=1280,800", "--hide-scrollbars"], &url)
    })
    .await
    .unwrap();
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "screenshot saved");
}

/// The layout of `page` in a frame `width` px wide, as the page's own
/// elements measure it in Chromium: the frame's width (`frame`), less a
/// scroll bar (`viewport`), the
/// page's (`page`, wider when something overflows), the right edge of the
/// header's badge, and each traffic chart's width beside its box's.
async fn layout(bin: &Path, profile: &Path, page: &str, width: u32) -> serde_json::Value {
    let srcdoc = page.replace('&', "&amp;").replace('"', "&quot;");
    let wrapper = format!(
        "<!doctype html><html><body style=margin:0>\
         <iframe id=f width={width} height=900 style=border:0 srcdoc=\"{srcdoc}\"></iframe><script>\
         addEventListener('load', () => {{ const d = document.getElementById('f').contentDocument;\
         const charts = [...d.querySelectorAll('svg.traffic')].map(s => ({{\
         chart: s.getBoundingClientRect().width, box: s.closest('.box').clientWidth }}));\
         document.body.setAttribute('data-layout', JSON.stringify({{\
         frame: d.defaultView.innerWidth, viewport: d.documentElement.clientWidth, page: d.documentElement.scrollWidth,\
         badge_right: d.getElementById('health').getBoundingClientRect().right, charts }})); }});\
         </script></body></html>"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("layout-{width}.html"));
    std::fs::write(&file, wrapper).unwrap();
    let (bin, profile) = (bin.to_path_buf(), profile.to_path_buf());
    let url = format!("file://{}", file.display());
    let dom =
        tokio::task::spawn_blocking(move || browse(&bin, &profile, &["--dump-dom", "--window-size=1400,1000"], &url))
            .await
            .unwrap();
    let at = dom.find("data-layout=\"").unwrap_or_else(|| panic!("no layout measured: {dom}")) + 13;
    let json = &dom[at..at + dom[at..].find('"').unwrap()];
    serde_json::from_str(&json.replace("&quot;", "\"").replace("&amp;", "&")).unwrap()
}
