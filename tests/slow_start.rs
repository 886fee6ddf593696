//! Slow start: a server that comes back from down gets a share of new
//! clients that grows over `slow_start`, not the flood `least_conn` would
//! send to its empty connection count, and not at first start.
//!
//! On tokio's paused clock: a pool of three servers, each with its own
//! active check (the real rise/fall machine, fed probe results), takes a
//! client every 10 ms; each client holds its connection (its place in the
//! server's count, as the proxy holds it) for 0.2 to 1.8 s, drawn from a
//! generator with a fixed seed. Time moves only when the test moves it, so
//! every share below is the same on every run: nothing here depends on the
//! machine's speed or on chance.

mod common;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::standin::{Manager, TestCa};
use common::{eventually, http_raw, loopback, server, start_lb_file};
use tokio::time::Instant;
use ucp_lb::config::{AdminState, Balance, Settings};
use ucp_lb::health::check::Check;
use ucp_lb::state::pool::{Pool, Server};

const ARRIVAL: Duration = Duration::from_millis(10);

fn pool(balance: Balance, slow_start: Duration) -> Pool {
    let history = Arc::new(ucp_lb::events::history::History::default());
    let servers = (1..=3)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{i}:443").parse().unwrap();
            Server {
                name: addr.to_string().into(),
                alias: None,
                nth: 0,
                addr,
                weight: 1,
                backup: false,
                preferred: None,
                labels: Arc::default(),
                max_conns: 0,
                config_state: AdminState::Up,
                slow_start,
                source: Default::default(),
                state: Arc::default(),
                check: Some(Arc::new(Check::new(
                    format!("https://{addr}/_ping"),
                    1,
                    1,
                    history.clone(),
                    Arc::default(),
                ))),
            }
        })
        .collect();
    let settings = Settings { balance, slow_start, ..Settings::default() };
    Pool::new("ucp".into(), settings, servers, Arc::default(), (history, Arc::default()))
}

fn probe(p: &Pool, idx: usize, ok: bool) {
    let failure = (!ok).then(|| "status 500".to_owned());
    p.servers[idx].check.as_ref().unwrap().record(failure, None, Duration::from_millis(1));
}

/// Clients arriving every [`ARRIVAL`], each holding its server for 0.2 to
/// 1.8 s (mean 1 s), on the paused clock.
struct Traffic {
    /// (until, server), sorted by until.
    open: VecDeque<(Instant, usize)>,
    seed: u64,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic { open: VecDeque::new(), seed: 0x9e37_79b9_7f4a_7c15 }
    }

    /// xorshift64: the same holds on every run.
    fn hold(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        Duration::from_millis(200 + self.seed % 1600)
    }
}

impl Traffic {
    /// Runs for `span`; returns which server each new client got.
    async fn run(&mut self, p: &Pool, span: Duration) -> Vec<usize> {
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let mut picks = Vec::new();
        let end = Instant::now() + span;
        while Instant::now() < end {
            tokio::time::advance(ARRIVAL).await;
            let now = Instant::now();
            while self.open.front().is_some_and(|&(until, _)| until <= now) {
                let (_, idx) = self.open.pop_front().unwrap();
                p.servers[idx].state.active.fetch_sub(1, Relaxed);
            }
            let pick = p.pick(now, client, &[]).expect("a server for every client");
            p.servers[pick.idx].state.active.fetch_add(1, Relaxed);
            let until = now + self.hold();
            let at = self.open.partition_point(|&(u, _)| u <= until);
            self.open.insert(at, (until, pick.idx));
            picks.push(pick.idx);
        }
        picks
    }
}

fn share(picks: &[usize], idx: usize) -> f64 {
    picks.iter().filter(|&&i| i == idx).count() as f64 / picks.len() as f64
}

/// What server 2 got after it came back.
struct Back {
    /// Its share of new clients in each tenth of the 10 s after.
    tenths: Vec<f64>,
    /// Its share of the first 25 clients (250 ms).
    first: f64,
    /// The warmth the pool gave it at the start of each tenth.
    warmth: Vec<Option<u32>>,
}

/// Runs the failure and recovery of server 2 with `slow_start`.
async fn recovery(balance: Balance, slow_start: Duration) -> Back {
    let p = pool(balance, slow_start);
    let mut traffic = Traffic::new();
    for i in 0..3 {
        probe(&p, i, true);
    }
    // First start: every server is up at its first result, and none warms.
    let first = traffic.run(&p, Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_eq!(p.servers[i].warmth(Instant::now()), None, "no slow start at first start");
        let s = share(&first, i);
        assert!((0.30..=0.37).contains(&s), "at first start server {i} gets a third: {s:.3}");
    }
    // Server 2 fails its check, is skipped, and loses its clients.
    probe(&p, 2, false);
    let out = traffic.run(&p, Duration::from_secs(5)).await;
    assert_eq!(share(&out, 2), 0.0, "a server down gets no client");
    assert_eq!(p.servers[2].state.active.load(Relaxed), 0);
    // It passes again: back, with the other two holding every client.
    probe(&p, 2, true);
    let mut tenths = Vec::new();
    let mut warmth = Vec::new();
    let mut first = 0.0;
    for t in 0..10 {
        warmth.push(p.servers[2].warmth(Instant::now() + ARRIVAL));
        let mut picks = traffic.run(&p, Duration::from_millis(250)).await;
        if t == 0 {
            first = share(&picks, 2);
        }
        picks.extend(traffic.run(&p, Duration::from_millis(750)).await);
        tenths.push(share(&picks, 2));
    }
    Back { tenths, first, warmth }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test(start_paused = true)]
async fn a_recovered_server_gets_a_growing_share_of_new_clients_with_least_conn() {
    let back = recovery(Balance::LeastConn, Duration::from_secs(10)).await;
    let (shares, warmth) = (&back.tenths, &back.warmth);
    let shown: Vec<String> = shares.iter().map(|s| format!("{s:.2}")).collect();
    eprintln!("least_conn, slow_start 10s: share of new clients per tenth of the window: {}", shown.join(" "));
    eprintln!("share of the first 25 clients: {:.2}", back.first);
    eprintln!("warmth (per mille) at the start of each tenth: {warmth:?}");
    // Its weight starts at a tenth and grows linearly.
    assert!(warmth[0].is_some_and(|w| (100..=102).contains(&w)), "{warmth:?}");
    assert!(warmth[5].is_some_and(|w| (550..=552).contains(&w)), "{warmth:?}");
    assert!(warmth.windows(2).all(|w| w[0] < w[1]), "grows: {warmth:?}");
    // First tenth well below a third, last tenth close to one.
    assert!(shares[0] < 0.15, "first tenth: {shares:?}");
    assert!(back.first < 0.3, "no flood at the start: {}", back.first);
    assert!((0.28..=0.40).contains(&shares[9]), "last tenth close to a third: {shares:?}");
    // Rising (second to second it wobbles: least_conn fills the room its
    // weight gives it, and clients leave when they leave).
    let (early, middle, late) = (mean(&shares[..3]), mean(&shares[3..7]), mean(&shares[7..]));
    assert!(early < middle && middle < late, "rises: {early:.3} {middle:.3} {late:.3}");
}

#[tokio::test(start_paused = true)]
async fn without_slow_start_least_conn_floods_the_recovered_server() {
    // What slow start prevents: its count is 0 against the others' ~100
    // each, so every new client goes to it until it has caught up.
    let back = recovery(Balance::LeastConn, Duration::ZERO).await;
    assert!(back.warmth.iter().all(Option::is_none));
    assert_eq!(back.first, 1.0, "flooded: every one of the first 25 clients");
    assert!(back.tenths[0] > 0.4, "flooded: {:?}", back.tenths);
}

#[tokio::test(start_paused = true)]
async fn round_robin_and_random_two_ramp_too() {
    // random_two draws from the thread's generator; the test's runtime runs
    // on this thread, so a fixed seed makes its draws the same every run.
    fastrand::seed(25);
    for balance in [Balance::RoundRobin, Balance::RandomTwo] {
        let shares = recovery(balance, Duration::from_secs(10)).await.tenths;
        let name = balance.as_str();
        eprintln!("{name}: {shares:.3?}");
        // Round robin follows the weight (a tenth of 2.1 weights: 0.05);
        // random_two also weighs the counts, which pull it up a little.
        assert!(shares[0] < 0.15, "{name} first tenth: {shares:?}");
        assert!((0.28..=0.40).contains(&shares[9]), "{name} last tenth: {shares:?}");
    }
}

/// Through a running LB with real HTTPS checks: a manager that fails its
/// `/_ping` and passes again is shown warming ("warming, 12 %") on
/// `/status`, the page and `/metrics`; a reload of the unchanged config
/// keeps it where it is in its slow start; servers up from the first check
/// never warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_lb_shows_the_warm_up_and_a_reload_keeps_it() {
    let ca = TestCa::new("test CA").unwrap();
    let mut ms = Vec::new();
    for i in 1..=3 {
        ms.push(Manager::start(&format!("manager-0{i}"), loopback(), &ca).await.unwrap());
    }
    let servers: Vec<String> = ms.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nbalance = \"least_conn\"\nslow_start = \"60s\"\nservers = [{}]\n\
         [pool.ucp.health]\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
        servers.join(", ")
    );
    std::fs::write(&path, &toml).unwrap();
    let lb = start_lb_file(&path).await;
    eventually("all up", || ms.iter().all(|m| server(&lb, m.addr).phrase == "in")).await;
    assert!(ms.iter().all(|m| server(&lb, m.addr).warming.is_none()), "no slow start at first start");

    ms[1].set_healthy(false);
    eventually("manager-02 down", || server(&lb, ms[1].addr).phrase.starts_with("out")).await;
    ms[1].set_healthy(true);
    eventually("manager-02 warming", || server(&lb, ms[1].addr).phrase.starts_with("warming")).await;
    let s = server(&lb, ms[1].addr);
    let w = s.warming.expect("warming");
    assert!((10..=20).contains(&w.percent), "{w:?}");
    assert_eq!(s.phrase, format!("warming, {} %", w.percent));
    assert!(s.eligible, "a warming server takes clients");
    assert!(w.left_ms > 40_000 && w.left_ms <= 60_000, "{w:?}");
    for m in [&ms[0], &ms[2]] {
        assert_eq!(server(&lb, m.addr).phrase, "in", "the others are not warming");
    }

    let admin = lb.admin_addr().unwrap();
    let page = http_raw(admin, "GET", "/", None).await;
    assert!(page.contains("warming, "), "page: {page}");
    // The servers' rows as text (for a reader of the test's output).
    for row in page.split("<tr class=server").skip(1) {
        let row = row.split("</tr>").next().unwrap_or("");
        let mut text = String::new();
        // (The split left the row's opening tag open.)
        let mut in_tag = true;
        for c in row.chars() {
            match c {
                '<' => {
                    in_tag = true;
                    text.push(' ');
                }
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("page row: {text}");
    }
    assert!(page.contains("slow start: weight 0."), "page details: {page}");
    let metrics = http_raw(admin, "GET", "/metrics", None).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ucp_lb_server_weight_ratio") && l.contains(&ms[1].addr.to_string()))
        .unwrap_or_else(|| panic!("no weight ratio for manager-02: {metrics}"));
    let ratio: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((0.1..0.3).contains(&ratio), "{line}");

    // A reload of the same file: still warming, from where it was.
    let before = server(&lb, ms[1].addr).warming.unwrap();
    lb.reload().await.unwrap();
    let after = server(&lb, ms[1].addr).warming.expect("still warming after a reload");
    assert!(after.percent >= before.percent && after.left_ms <= before.left_ms, "{before:?} then {after:?}");
    assert!(after.left_ms + 5_000 > before.left_ms, "not started over: {before:?} then {after:?}");
    lb.shutdown().await;
}
