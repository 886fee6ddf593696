//! nginx-style passive ejection and connect retries, through a running LB.

mod common;

use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

#[tokio::test(start_paused = true)]
async fn refusing_server_is_ejected_after_max_fails_and_tried_again_after_fail_timeout() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let refusing = refusing_addr();
    let lb = start_lb(&one_pool(&[a.addr, refusing, b.addr], "max_fails = 2\nfail_timeout = \"30s\"")).await;
    let addr = lb.listener_addrs()[0];
    for i in 0..300 {
        round_trip(addr).await.unwrap_or_else(|e| panic!("client {i} failed: {e}"));
    }
    let r = server(&lb, refusing);
    assert_eq!(r.connect_failures, 2, "tried until max_fails, then skipped");
    assert!(r.ejected);
    assert_eq!(a.count() + b.count(), 300);
    assert!(a.count().abs_diff(b.count()) <= 2, "split evenly: {} / {}", a.count(), b.count());

    // Still inside fail_timeout: no further attempts on it. (Paused clock:
    // moved, not waited.)
    tokio::time::advance(Duration::from_secs(29)).await;
    for _ in 0..10 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(server(&lb, refusing).connect_failures, 2);

    // Past fail_timeout: one client tries it (and is retried elsewhere), then
    // it is out for another fail_timeout.
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..10 {
        round_trip(addr).await.unwrap();
    }
    let r = server(&lb, refusing);
    assert_eq!(r.connect_failures, 3, "exactly one trial after fail_timeout");
    assert!(r.ejected);
}

#[tokio::test]
async fn recovered_server_is_readmitted_on_its_trial_connect() {
    let a = Echo::start().await;
    let dormant = Dormant::new();
    let b_addr = dormant.addr;
    let lb = start_lb(&one_pool(&[a.addr, b_addr], "max_fails = 1\nfail_timeout = \"500ms\"")).await;
    let addr = lb.listener_addrs()[0];
    for _ in 0..4 {
        round_trip(addr).await.unwrap();
    }
    assert!(server(&lb, b_addr).ejected);
    let b = dormant.wake();
    // After fail_timeout the next trial connects, and b is back in rotation.
    eventually_async("b tried again", || async {
        round_trip(addr).await.unwrap();
        b.count() > 0
    })
    .await;
    let st = server(&lb, b_addr);
    assert!(!st.ejected && st.fails == 0, "{st:?}");
}

#[tokio::test]
async fn blackholed_server_delays_a_client_by_at_most_connect_timeout() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let hole = Blackhole::new();
    let lb = start_lb(&one_pool(&[a.addr, hole.addr, b.addr], "connect_timeout = \"500ms\"\nmax_fails = 2")).await;
    let addr = lb.listener_addrs()[0];
    // Each client is served, through another server when its pick was
    // the blackholed one: the deadline only catches a client left waiting
    // for the kernel's own connect timeout (minutes).
    for i in 0..30 {
        within("client through the LB", round_trip(addr)).await.unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    let h = server(&lb, hole.addr);
    assert_eq!(h.connect_failures, 2, "two timeouts, then ejected");
    assert_eq!(h.connect_failures_by_reason.get("timeout"), Some(&2), "given up at connect_timeout: {h:?}");
    assert!(h.ejected);
    assert_eq!(a.count() + b.count(), 30);
}

#[tokio::test]
async fn single_server_pool_is_never_ejected() {
    let dormant = Dormant::new();
    let addr_s = dormant.addr;
    let lb = start_lb(&one_pool(&[addr_s], "max_fails = 1\nfail_timeout = \"1h\"")).await;
    let addr = lb.listener_addrs()[0];
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(within("client closed", closed(&mut c)).await);
    }
    let st = server(&lb, addr_s);
    assert!(!st.ejected && st.eligible, "{st:?}");
    let _echo = dormant.wake();
    // No fail_timeout to wait for: the very next client is served.
    round_trip(addr).await.unwrap();
}

#[tokio::test]
async fn retries_zero_means_one_attempt() {
    let a = Echo::start().await;
    let refusing = refusing_addr();
    let lb = start_lb(&one_pool(&[refusing, a.addr], "retries = 0\nmax_fails = 5")).await;
    let addr = lb.listener_addrs()[0];
    let mut failed = 0;
    for _ in 0..4 {
        if round_trip(addr).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 2, "every client sent to the refusing server fails");
}

async fn all_down_case(mode: &str) -> (bool, ucp_lb::Running, Vec<Echo>) {
    let (d1, d2) = (Dormant::new(), Dormant::new());
    let keys = format!("max_fails = 1\nfail_timeout = \"1h\"\nall_down = \"{mode}\"");
    let lb = start_lb(&one_pool(&[d1.addr, d2.addr], &keys)).await;
    let addr = lb.listener_addrs()[0];
    // Both refuse: both ejected for an hour.
    assert!(round_trip(addr).await.is_err());
    assert!(server(&lb, d1.addr).ejected && server(&lb, d2.addr).ejected);
    // They recover, but passive ejection still holds them out.
    let echoes = vec![d1.wake(), d2.wake()];
    let served = round_trip(addr).await.is_ok();
    (served, lb, echoes)
}

#[tokio::test]
async fn all_down_fail_open_routes_over_ejected_servers() {
    let (served, lb, _e) = all_down_case("fail_open").await;
    assert!(served, "fail_open tries the ejected servers");
    let p = &lb.status()[0];
    assert!(p.all_down && p.fail_open_picks >= 1, "{p:?}");
}

#[tokio::test]
async fn all_down_reject_closes_the_client() {
    let (served, lb, e) = all_down_case("reject").await;
    assert!(!served, "reject closes");
    assert_eq!(e[0].count() + e[1].count(), 0);
    assert!(lb.status()[0].all_down);
}
