//! What the operator sees follows server state, not traffic: a pool whose
//! servers all fail their checks is reported all down (and failing open)
//! by /status, /metrics and the page with no client at all, and healthy
//! again after recovery; each transition is logged exactly once.

mod common;

use std::net::SocketAddr;

use common::standin::{Manager, TestCa};
use common::{Proc, eventually_async, http_raw, loopback};

/// The answer's body (after the blank line).
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

struct Seen {
    status_all_down: bool,
    status_fail_open: bool,
    metric: bool,
    page: bool,
}

async fn seen(admin: SocketAddr) -> Seen {
    let status: serde_json::Value =
        serde_json::from_str(body(&http_raw(admin, "GET", "/status", None).await)).expect("/status is JSON");
    let pool = &status["pools"][0];
    let metrics = http_raw(admin, "GET", "/metrics", None).await;
    let metric = metrics
        .lines()
        .find(|l| l.starts_with("ucp_lb_pool_fail_open{pool=\"ucp\"}"))
        .unwrap_or_else(|| panic!("no ucp_lb_pool_fail_open series:\n{metrics}"))
        .ends_with(" 1");
    let page = http_raw(admin, "GET", "/", None).await.contains("no server eligible");
    Seen {
        status_all_down: pool["all_down"].as_bool().expect("all_down"),
        status_fail_open: pool["fail_open"].as_bool().expect("fail_open"),
        metric,
        page,
    }
}

#[tokio::test]
async fn a_quiet_pool_losing_every_server_is_reported_and_logged_once_each_way() {
    let ca = TestCa::new("status test CA").unwrap();
    let mut managers = Vec::new();
    for i in 1..=3 {
        managers.push(Manager::start(&format!("manager-0{i}"), loopback(), &ca).await.unwrap());
    }
    let servers: Vec<String> = managers.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    // Two intervals of 200 ms is the promise; fall 1 and rise 1 make one
    // probe decide each way.
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nservers = [{}]\nall_down = \"fail_open\"\n\
         [pool.ucp.health]\nkind = \"https\"\npath = \"/_ping\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 1\n",
        servers.join(", ")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let lb = Proc::lb(&path);
    let admin = lb.admin_addr().await;
    lb.wait_for_line("listening bind=").await;

    let s = seen(admin).await;
    assert!(!s.status_all_down && !s.status_fail_open && !s.metric && !s.page, "healthy at start");

    // Every manager's UCP breaks; no client connects at any point.
    let broke = std::time::Instant::now();
    for m in &managers {
        m.set_healthy(false);
    }
    eventually_async("all down in /status, /metrics and the page", || async {
        let s = seen(admin).await;
        s.status_all_down && s.status_fail_open && s.metric && s.page
    })
    .await;
    // Printed, not asserted (a loaded machine may be slower): the promise
    // is two check intervals, 400 ms here.
    eprintln!("all down seen everywhere {:?} after the managers broke", broke.elapsed());
    lb.wait_for_line("no server is eligible: failing open").await;

    let mended = std::time::Instant::now();
    for m in &managers {
        m.set_healthy(true);
    }
    eventually_async("healthy again everywhere", || async {
        let s = seen(admin).await;
        !s.status_all_down && !s.status_fail_open && !s.metric && !s.page
    })
    .await;
    eprintln!("healthy seen everywhere {:?} after the managers mended", mended.elapsed());
    lb.wait_for_line("a server is eligible again").await;

    let text = lb.text();
    assert_eq!(text.matches("no server is eligible").count(), 1, "one line for the start:\n{text}");
    assert_eq!(text.matches("a server is eligible again").count(), 1, "one line for the end:\n{text}");
    let status: serde_json::Value = serde_json::from_str(body(&http_raw(admin, "GET", "/status", None).await)).unwrap();
    assert_eq!(status["pools"][0]["fail_open_picks"], 0, "no client came: nothing was routed");
    // The history says so too, newest first: the pool's episode, between
    // the checks that caused it.
    let whats: Vec<&str> = status["events"].as_array().unwrap().iter().filter_map(|e| e["what"].as_str()).collect();
    let (back, lost) = (
        whats.iter().position(|w| *w == "pool has a server again").expect("the end of the episode"),
        whats.iter().position(|w| *w == "pool all down").expect("its start"),
    );
    assert!(back < lost, "newest first: {whats:?}");
    assert_eq!(whats.iter().filter(|w| **w == "server down").count(), 3, "{whats:?}");
}
