//! Pools that follow the swarm (issue 38), on the real binary with the
//! stand-in Engine API (`src/cli/swarm.rs`): the managers it lists are
//! the pool, what it says of each (drain, down, gone) is what the pool
//! does, and a failing API (500, garbage, refusing, a wrong client
//! certificate, an upgrade meanwhile) never empties the pool.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::standin::TestCa;
use common::swarm::{Answer, StandNode, SwarmApi, write_bundle};
use common::{BIN, Proc, eventually_async, http_raw, within};

/// A server at `ip:port` that says its name, then echoes lines: a node's
/// UCP as the tests see it.
struct Named {
    _task: tokio::task::JoinHandle<()>,
}

async fn named(name: &'static str, addr: SocketAddr) -> Named {
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                if w.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if w.write_all(format!("{name}:{l}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Named { _task: task }
}

/// Loopback addresses of their own for each test (`127.38.T.N`), all on
/// one port: a swarm's nodes serve the same port at different addresses.
fn ip(t: u8, n: u8) -> String {
    format!("127.38.{t}.{n}")
}

/// A port free on `127.38.T.1`..`127.38.T.9` (found on the first, then
/// bound on each by the caller).
fn free_port(t: u8) -> u16 {
    std::net::TcpListener::bind(format!("{}:0", ip(t, 1))).unwrap().local_addr().unwrap().port()
}

fn at(t: u8, n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(t, n).parse::<IpAddr>().unwrap(), port)
}

/// lb.toml in `dir`: pool "ucp" takes the managers at `port` (and
/// `static_servers`), the cluster read every 200 ms from `api` with the
/// bundle in `dir/bundle`.
fn write_config(dir: &Path, api: &[SocketAddr], port: u16, static_servers: &[SocketAddr]) -> PathBuf {
    let api: Vec<String> = api.iter().map(|a| format!("\"{a}\"")).collect();
    let servers: Vec<String> = static_servers.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"{}\"\n\
         [cluster]\napi = [{}]\nbundle = \"bundle\"\nrefresh = \"200ms\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nservers = [{}]\nnodes = {{ role = \"manager\", port = {port} }}\n",
        dir.join("run").join("control.sock").display(),
        api.join(", "),
        servers.join(", "),
    );
    let path = dir.join("lb.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn get(admin: SocketAddr, path: &str) -> String {
    let text = http_raw(admin, "GET", path, None).await;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let body = get(admin, "/status").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is JSON: {e}: {body}"))
}

/// The name of the server a new client reaches.
async fn who(lb: SocketAddr) -> String {
    let s = TcpStream::connect(lb).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    within("a server's name", lines.next_line()).await.ok().flatten().unwrap_or_default()
}

/// Whom `n` new clients reach.
async fn reached(lb: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for _ in 0..n {
        out.insert(who(lb).await);
    }
    out
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The state `/status` shows for the server named `name` in pool "ucp"
/// (`None`: not listed).
fn server_state(st: &serde_json::Value, name: &str) -> Option<(String, String)> {
    let servers = st["pools"][0]["servers"].as_array()?;
    let s = servers.iter().find(|s| s["name"] == name && s["removed"] == false)?;
    Some((s["state"].as_str()?.to_owned(), s["source"].as_str()?.to_owned()))
}

fn events(st: &serde_json::Value) -> String {
    st["events"].to_string()
}

struct Swarm {
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    api: SwarmApi,
    lb: Proc,
    admin: SocketAddr,
    listener: SocketAddr,
}

/// The stand-in API listing `nodes`, a bundle, and ucp-lb on them.
async fn swarm(t: u8, port: u16, nodes: Vec<StandNode>, static_servers: &[SocketAddr]) -> (Swarm, TestCa) {
    swarm_with(t, port, nodes, static_servers, |c| c).await
}

/// [`swarm`] with lb.toml's text edited by `edit` first.
async fn swarm_with(
    t: u8,
    port: u16,
    nodes: Vec<StandNode>,
    static_servers: &[SocketAddr],
    edit: impl Fn(String) -> String,
) -> (Swarm, TestCa) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("swarm CA").unwrap();
    write_bundle(&dir.path().join("bundle"), &ca, "admin").unwrap();
    let api = SwarmApi::start(at(t, 200, 0), &ca, nodes).await.unwrap();
    let cfg = write_config(dir.path(), &[api.addr], port, static_servers);
    std::fs::write(&cfg, edit(std::fs::read_to_string(&cfg).unwrap())).unwrap();
    let lb = Proc::lb(&cfg);
    let admin = lb.admin_addr().await;
    let listener = lb.listener_addr().await;
    (Swarm { _dir: dir, cfg, api, lb, admin, listener }, ca)
}

#[tokio::test]
async fn the_pool_is_the_swarms_managers_and_follows_what_the_swarm_says() {
    let t = 1;
    let port = free_port(t);
    let _servers = [
        named("m1", at(t, 2, port)).await,
        named("m2", at(t, 3, port)).await,
        named("m3", at(t, 4, port)).await,
        named("w1", at(t, 5, port)).await,
    ];
    // m2 reports 0.0.0.0 as real managers do: reached at its manager address.
    let mut m2 = StandNode::manager("m2", "0.0.0.0");
    m2.manager_addr = Some(format!("{}:2377", ip(t, 3)));
    let mut nodes = vec![
        StandNode::manager("m1", &ip(t, 2)),
        m2,
        StandNode::manager("m3", &ip(t, 4)),
        StandNode::worker("w1", &ip(t, 5)),
    ];
    let (s, _ca) = swarm(t, port, nodes.clone(), &[]).await;
    // Read before the first client: a pool of nodes only serves from the start.
    assert_eq!(reached(s.listener, 9).await, set(&["m1", "m2", "m3"]));
    let st = status(s.admin).await;
    assert_eq!(server_state(&st, "m2"), Some(("up".into(), "cluster".into())), "{st}");
    assert_eq!(st["pools"][0]["cluster_nodes"], 3);
    assert!(st["cluster"]["endpoint"].as_str().is_some_and(|e| e == s.api.addr.to_string()), "{}", st["cluster"]);

    // Promoted: the worker joins within a refresh.
    nodes[3].role = "manager".into();
    nodes[3].manager_addr = Some(format!("{}:2377", ip(t, 5)));
    s.api.set_nodes(nodes.clone());
    eventually_async("w1 joined", || async { reached(s.listener, 8).await.contains("w1") }).await;
    assert!(events(&status(s.admin).await).contains("w1 joined the pool"));

    // Drained: no new client, and a connection opened before goes on.
    let mut kept = None;
    for _ in 0..8 {
        let c = TcpStream::connect(s.listener).await.unwrap();
        let mut lines = BufReader::new(c);
        let mut name = String::new();
        lines.read_line(&mut name).await.unwrap();
        if name.trim() == "m1" {
            kept = Some(lines);
            break;
        }
    }
    let mut kept = kept.expect("a client reached m1 within 8");
    nodes[0].availability = "drain".into();
    s.api.set_nodes(nodes.clone());
    eventually_async("m1 drained", || async {
        server_state(&status(s.admin).await, "m1").is_some_and(|(st, _)| st == "drain")
    })
    .await;
    assert!(!reached(s.listener, 12).await.contains("m1"), "a drained node gets no new client");
    kept.get_mut().write_all(b"still there\n").await.unwrap();
    let mut echo = String::new();
    within("the echo on the earlier connection", kept.read_line(&mut echo)).await.unwrap();
    assert_eq!(echo.trim(), "m1:still there");
    assert!(events(&status(s.admin).await).contains("m1 drained in the swarm"));

    // Gone from the list: removed, no client.
    nodes.remove(2);
    s.api.set_nodes(nodes.clone());
    eventually_async("m3 removed", || async { server_state(&status(s.admin).await, "m3").is_none() }).await;
    assert!(!reached(s.listener, 12).await.contains("m3"));

    // Down in the swarm though it still accepts: no client.
    nodes[1].state = "down".into();
    s.api.set_nodes(nodes.clone());
    eventually_async("m2 down", || async {
        server_state(&status(s.admin).await, "m2").is_some_and(|(st, _)| st == "down")
    })
    .await;
    assert_eq!(reached(s.listener, 12).await, set(&["w1"]));
    drop(s.lb);
}

#[tokio::test]
async fn a_failing_api_keeps_the_last_good_list_and_says_why() {
    let t = 2;
    let port = free_port(t);
    let _servers = [named("m1", at(t, 2, port)).await, named("m2", at(t, 3, port)).await];
    let nodes = vec![StandNode::manager("m1", &ip(t, 2)), StandNode::manager("m2", &ip(t, 3))];
    let (s, _ca) = swarm(t, port, nodes, &[]).await;
    let both = set(&["m1", "m2"]);
    eventually_async("the managers are the pool", || async { reached(s.listener, 6).await == both }).await;
    for (answer, reason, said) in [
        (Some(Answer::NoLeader), "status", "status 500"),
        (Some(Answer::Garbage), "invalid", "not a node list"),
        (Some(Answer::NoLeader), "status", "status 500"),
        // Cut short (Content-Length past the body): the answer is invalid,
        // not a connection that failed.
        (Some(Answer::Truncated), "invalid", "cut short"),
        (None, "connect", "refused"),
    ] {
        match answer {
            Some(a) => s.api.set(a),
            None => s.api.stop(),
        }
        eventually_async(reason, || async {
            let c = &status(s.admin).await["cluster"];
            c["failures"][reason].as_u64().unwrap_or(0) > 0
                && c["last_error"].as_str().is_some_and(|e| e.contains(said))
        })
        .await;
        assert_eq!(reached(s.listener, 6).await, both, "the last good list serves ({reason})");
    }
    let st = status(s.admin).await;
    assert_eq!(st["cluster"]["nodes"], 2, "{}", st["cluster"]);
    assert!(events(&st).matches("cluster read failed").count() >= 3, "one event per reason: {}", events(&st));
    let metrics = get(s.admin, "/metrics").await;
    for reason in ["status", "invalid", "connect"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("ucp_lb_cluster_refresh_failures_total{{reason=\"{reason}\"}}")))
            .unwrap_or_else(|| panic!("{reason} counted:\n{metrics}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    assert!(metrics.contains("ucp_lb_pool_cluster_nodes{pool=\"ucp\"} 2"), "{metrics}");
    assert!(metrics.contains("ucp_lb_cluster_list_age_seconds"));
    // The log comes through the process's log thread and a pipe: it can
    // come after /status and /metrics show the same.
    s.lb.wait_for_line("kept=2").await;
    let log = s.lb.text();
    assert!(log.contains("kept=2") && !log.contains("Some("), "plain values in the log:\n{log}");
}

#[tokio::test]
async fn a_wrong_client_certificate_is_refused_and_the_static_servers_serve_meanwhile() {
    let t = 3;
    let port = free_port(t);
    let _servers = [named("static", at(t, 2, port)).await, named("m1", at(t, 3, port)).await];
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("swarm CA").unwrap();
    let other = TestCa::new("another CA").unwrap();
    // The bundle trusts the API, but its certificate is another CA's.
    let bundle = dir.path().join("bundle");
    write_bundle(&bundle, &other, "admin").unwrap();
    std::fs::write(bundle.join("ca.pem"), &ca.pem).unwrap();
    let api = SwarmApi::start(at(t, 200, 0), &ca, vec![StandNode::manager("m1", &ip(t, 3))]).await.unwrap();
    let cfg = write_config(dir.path(), &[api.addr], port, &[at(t, 2, port)]);
    let lb = Proc::lb(&cfg);
    let (admin, listener) = (lb.admin_addr().await, lb.listener_addr().await);
    eventually_async("the refusal reported", || async {
        let c = &status(admin).await["cluster"];
        c["failures"]["tls"].as_u64().unwrap_or(0) > 0 && c["last_error"].as_str().is_some_and(|e| e.contains("TLS"))
    })
    .await;
    use std::sync::atomic::Ordering::Relaxed;
    assert!(api.refused.load(Relaxed) > 0, "the API refused the handshake");
    assert_eq!(api.reads.load(Relaxed), 0, "and answered no node list");
    assert_eq!(reached(listener, 4).await, set(&["static"]), "started on its static servers");
    let page = get(admin, "/").await;
    assert!(page.contains("no node list read yet"), "the page says so");
    // A bundle the API accepts, and a reload: the bundle is read again
    // (certificate rotation), and the node joins.
    write_bundle(&bundle, &ca, "admin").unwrap();
    lb.signal("HUP");
    eventually_async("m1 joined after the reload", || async { reached(listener, 6).await.contains("m1") }).await;
    assert!(status(admin).await["cluster"]["last_error"].is_null());
}

#[tokio::test]
async fn an_upgrade_while_the_api_is_down_keeps_the_list() {
    let t = 4;
    let port = free_port(t);
    let _servers = [named("m1", at(t, 2, port)).await, named("m2", at(t, 3, port)).await];
    let nodes = vec![StandNode::manager("m1", &ip(t, 2)), StandNode::manager("m2", &ip(t, 3))];
    let (mut s, _ca) = swarm(t, port, nodes, &[]).await;
    let both = set(&["m1", "m2"]);
    eventually_async("the managers are the pool", || async { reached(s.listener, 6).await == both }).await;
    s.api.stop();
    eventually_async("the API down", || async { status(s.admin).await["cluster"]["last_error"].is_string() }).await;
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&s.cfg).arg("--upgrade").env("RUST_LOG", "info");
    let new = Proc::spawn(cmd, false);
    new.wait_for_line("control socket up").await;
    assert_eq!(s.lb.exit_code().await, Some(0), "the old process hands over:\n{}", s.lb.text());
    let st = status(s.admin).await;
    assert_ne!(st["process"]["pid"], serde_json::Value::Null);
    assert_eq!(st["process"]["took_over_from"].as_u64(), Some(u64::from(s.lb.child.id())), "{}", st["process"]);
    assert_eq!(reached(s.listener, 6).await, both, "the new process serves the list it was handed");
    assert_eq!(status(s.admin).await["cluster"]["nodes"], 2);
}

/// Node events (`GET /events`, filtered on nodes) ask for a read at once:
/// with `refresh = "1h"`, a node that joins is followed all the same.
#[tokio::test]
async fn a_node_event_is_followed_without_waiting_for_the_refresh() {
    let t = 7;
    let port = free_port(t);
    let _servers = [named("m1", at(t, 2, port)).await, named("m2", at(t, 3, port)).await];
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("swarm CA").unwrap();
    write_bundle(&dir.path().join("bundle"), &ca, "admin").unwrap();
    let mut nodes = vec![StandNode::manager("m1", &ip(t, 2))];
    let api = SwarmApi::start(at(t, 200, 0), &ca, nodes.clone()).await.unwrap();
    let cfg = write_config(dir.path(), &[api.addr], port, &[]);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("refresh = \"200ms\"", "refresh = \"1h\"");
    std::fs::write(&cfg, text).unwrap();
    let lb = Proc::lb(&cfg);
    let (admin, listener) = (lb.admin_addr().await, lb.listener_addr().await);
    assert_eq!(reached(listener, 4).await, set(&["m1"]));
    eventually_async("the events followed", || async {
        api.watchers() > 0 && status(admin).await["cluster"]["events_from"] == api.addr.to_string()
    })
    .await;
    nodes.push(StandNode::manager("m2", &ip(t, 3)));
    api.set_nodes(nodes);
    eventually_async("m2 joined on its event", || async { reached(listener, 4).await.contains("m2") }).await;
}

/// A node at the address a static server's name resolves to
/// (`servers = ["localhost:P"]`, a manager at 127.0.0.1) is that server,
/// not a second one: the server as written wins, one backend counted once.
#[tokio::test]
async fn a_node_at_a_static_servers_resolved_address_is_not_a_second_server() {
    let t = 8;
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    drop(local);
    let _servers = [named("local", at_ip("127.0.0.1", port)).await, named("m2", at(t, 3, port)).await];
    let nodes = vec![StandNode::manager("m1", "127.0.0.1"), StandNode::manager("m2", &ip(t, 3))];
    let local = format!("servers = [\"localhost:{port}\"]");
    let (s, _ca) = swarm_with(t, port, nodes, &[], |c| c.replace("servers = []", &local)).await;
    let admin = s.admin;
    eventually_async("m2 joined", || async { server_state(&status(admin).await, "m2").is_some() }).await;
    let st = status(admin).await;
    assert_eq!(server_state(&st, "m1"), None, "127.0.0.1 is localhost's: no second server: {}", st["pools"][0]);
    let live: Vec<_> = st["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["removed"] == false && s["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")))
        .collect();
    assert_eq!(live.len(), 1, "127.0.0.1:{port} once: {}", st["pools"][0]);
    assert_eq!(st["pools"][0]["cluster_nodes"], 1);
}

fn at_ip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A storm of node events (one every 10 ms) is not a read each: reads
/// asked by events are at least `min(refresh, 1s)` apart, and the last
/// change is followed all the same.
#[tokio::test]
async fn a_storm_of_node_events_is_one_read_per_second_and_the_last_change_is_followed() {
    use std::sync::atomic::Ordering::Relaxed;
    let t = 9;
    let port = free_port(t);
    let _servers = [named("m1", at(t, 2, port)).await, named("m2", at(t, 3, port)).await];
    let mut nodes = vec![StandNode::manager("m1", &ip(t, 2)), StandNode::worker("w1", &ip(t, 5))];
    let (s, _ca) =
        swarm_with(t, port, nodes.clone(), &[], |c| c.replace("refresh = \"200ms\"", "refresh = \"1h\"")).await;
    eventually_async("the events followed", || async {
        s.api.watchers() > 0 && status(s.admin).await["cluster"]["events_from"] == s.api.addr.to_string()
    })
    .await;
    let (r0, start) = (s.api.reads.load(Relaxed), std::time::Instant::now());
    // Pacing the storm, not synchronising: an event every 10 ms for 3 s.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    while start.elapsed() < std::time::Duration::from_secs(3) {
        tick.tick().await;
        nodes[1].availability = if nodes[1].availability == "drain" { "active" } else { "drain" }.into();
        s.api.set_nodes(nodes.clone());
    }
    nodes.push(StandNode::manager("m2", &ip(t, 3)));
    s.api.set_nodes(nodes);
    eventually_async("m2 joined after the storm", || async { reached(s.listener, 6).await.contains("m2") }).await;
    let (reads, secs) = (s.api.reads.load(Relaxed) - r0, start.elapsed().as_secs());
    eprintln!("{reads} reads in {secs} s of events every 10 ms");
    assert!(reads <= secs + 3, "at most one read per second: {reads} in {secs} s");
}

/// One node without an address (a down worker reporting 0.0.0.0, a ready
/// manager with no address at all) is left out with one warning, and the
/// rest of the list is followed.
#[tokio::test]
async fn a_node_without_an_address_is_left_out_once_and_the_rest_followed() {
    let t = 10;
    let port = free_port(t);
    let _servers = [named("m1", at(t, 2, port)).await, named("m2", at(t, 3, port)).await];
    let mut down = StandNode::worker("w-down", "0.0.0.0");
    down.state = "down".into();
    let mut lost = StandNode::manager("m-lost", "0.0.0.0");
    lost.manager_addr = None;
    let mut nodes = vec![StandNode::manager("m1", &ip(t, 2)), down, lost];
    let (s, _ca) = swarm(t, port, nodes.clone(), &[]).await;
    assert_eq!(reached(s.listener, 4).await, set(&["m1"]));
    nodes.push(StandNode::manager("m2", &ip(t, 3)));
    s.api.set_nodes(nodes);
    eventually_async("m2 joined", || async { reached(s.listener, 6).await.contains("m2") }).await;
    let refreshed = status(s.admin).await["cluster"]["refreshes"].as_u64().unwrap_or(0);
    eventually_async("more reads", || async {
        status(s.admin).await["cluster"]["refreshes"].as_u64().unwrap_or(0) > refreshed + 3
    })
    .await;
    let log = s.lb.text();
    for name in ["w-down", "m-lost"] {
        let n = log.lines().filter(|l| l.contains("left out") && l.contains(name)).count();
        assert_eq!(n, 1, "{name} warned of once:\n{log}");
    }
    assert!(events(&status(s.admin).await).contains("m-lost left out"), "the ready one is an event");
}

/// A list that changes by many nodes at once (a flapping API: 3 nodes,
/// then 40, then 3) is one log line and one event per kind of change,
/// not one per node.
#[tokio::test]
async fn many_nodes_changing_at_once_are_summarised() {
    let t = 11;
    let port = free_port(t);
    let few = vec![StandNode::manager("m1", &ip(t, 2))];
    let many: Vec<StandNode> =
        (0..40).map(|i| StandNode::manager(&format!("n{i:02}"), &format!("10.38.11.{}", i + 1))).collect();
    let (s, _ca) = swarm(t, port, few.clone(), &[]).await;
    s.api.set_nodes([few.clone(), many].concat());
    eventually_async("the 40 joined", || async { events(&status(s.admin).await).contains("40 nodes joined pool ucp") })
        .await;
    s.api.set_nodes(few);
    eventually_async("the 40 left", || async { events(&status(s.admin).await).contains("40 nodes left pool ucp") })
        .await;
    let ev = events(&status(s.admin).await);
    assert!(ev.contains("n00, n01, n02, … and 37 more"), "{ev}");
    // The log reaches this test through the process's log thread and a
    // pipe: it can come after /status shows the event.
    s.lb.wait_for_line("40 nodes left pool ucp").await;
    let log = s.lb.text();
    assert_eq!(log.lines().filter(|l| l.contains("joined")).count(), 1, "one line:\n{log}");
    assert_eq!(log.lines().filter(|l| l.contains("left")).count(), 1, "{log}");
}

/// What the swarm did reads as the swarm's ("drained in the swarm", "down
/// in the swarm: down"), an admin override reads as one and still wins
/// (`admin_override` beside `swarm` in /status, both on the page, the log
/// saying the override keeps it in), and `follow` clears it.
#[tokio::test]
async fn the_swarms_state_and_an_admin_override_are_shown_apart_and_follow_clears_it() {
    let t = 12;
    let port = free_port(t);
    let _servers = [named("m1", at(t, 2, port)).await, named("m2", at(t, 3, port)).await];
    let secret = tempfile::tempdir().unwrap();
    let token_file = secret.path().join("token");
    common::write_secret(&token_file, "s3cret\n");
    let mut nodes = vec![StandNode::manager("m1", &ip(t, 2)), StandNode::manager("m2", &ip(t, 3))];
    let token = format!("[admin]\ntoken_file = \"{}\"\n", token_file.display());
    let (s, _ca) = swarm_with(t, port, nodes.clone(), &[], |c| c.replacen("[admin]\n", &token, 1)).await;
    let m2 = |st: &serde_json::Value| -> serde_json::Value {
        st["pools"][0]["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "m2").cloned())
            .unwrap_or_default()
    };
    let post = |action: &'static str| {
        let admin = s.admin;
        async move {
            let r = http_raw(admin, "POST", &format!("/pools/ucp/servers/m2/{action}"), Some("s3cret")).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{action}: {r}");
        }
    };
    nodes[1].availability = "drain".into();
    s.api.set_nodes(nodes.clone());
    eventually_async("m2 drained", || async { m2(&status(s.admin).await)["swarm"] == "drain" }).await;
    let st = m2(&status(s.admin).await);
    assert_eq!(st["phrase"], "drained in the swarm, 0 open", "{st}");
    assert!(st["admin_override"].is_null(), "{st}");
    let page = get(s.admin, "/").await;
    assert!(page.contains("class='state warn'>drained in the swarm, 0 open<") && !page.contains("set drain"), "{page}");

    // An admin override wins, and says so.
    post("enable").await;
    let st = m2(&status(s.admin).await);
    assert_eq!(
        (st["state"].as_str(), st["admin_override"].as_str(), st["swarm"].as_str()),
        (Some("up"), Some("enable"), Some("drain")),
        "{st}"
    );
    assert!(reached(s.listener, 8).await.contains("m2"), "enabled: it takes clients");
    nodes[1].availability = "active".into();
    s.api.set_nodes(nodes.clone());
    eventually_async("m2 active in the swarm", || async { m2(&status(s.admin).await)["swarm"] == "active" }).await;
    nodes[1].availability = "drain".into();
    s.api.set_nodes(nodes.clone());
    eventually_async("m2 drained again", || async { m2(&status(s.admin).await)["swarm"] == "drain" }).await;
    let said = "m2 drained in the swarm; an admin override (enable) keeps it in";
    assert!(events(&status(s.admin).await).contains(said), "{}", events(&status(s.admin).await));
    s.lb.wait_for_line(said).await; // logged too (the log can come after /status)
    let page = get(s.admin, "/").await;
    assert!(page.contains("from the swarm, which says drain") && page.contains("admin override: enable"), "{page}");

    // `follow`: the swarm's drain again.
    post("follow").await;
    let st = m2(&status(s.admin).await);
    assert_eq!((st["state"].as_str(), st["admin_override"].as_str()), (Some("drain"), None), "{st}");
    assert!(!reached(s.listener, 8).await.contains("m2"), "it follows the swarm's drain");

    nodes[1].availability = "active".into();
    nodes[1].state = "down".into();
    s.api.set_nodes(nodes);
    eventually_async("m2 down in the swarm", || async { m2(&status(s.admin).await)["swarm"] == "down" }).await;
    let st = m2(&status(s.admin).await);
    assert!(st["phrase"].as_str().is_some_and(|p| p.starts_with("out: down in the swarm: down")), "{st}");
    assert!(!get(s.admin, "/").await.contains("set down"), "the swarm's down is not a 'set'");
}

/// `check`: a bundle with a file missing or a key not the certificate's is
/// an error naming the file; an API it cannot reach is a warning.
#[tokio::test]
async fn check_names_the_bundles_bad_file_and_warns_of_an_unreachable_api() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("swarm CA").unwrap();
    let bundle = dir.path().join("bundle");
    write_bundle(&bundle, &ca, "admin").unwrap();
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = write_config(dir.path(), &[refusing], 443, &[]);
    let check = |offline: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("check").arg(&cfg);
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = check(false);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cannot read the node list") && err.contains("static servers"), "{err}");
    let (code, err) = check(true);
    assert_eq!(code, Some(0));
    assert!(!err.contains("node list"), "--offline does not ask the API: {err}");

    // Another key: not the certificate's.
    let (_, other_key) = ca.issue_pem("x", &[]).unwrap();
    let key = bundle.join("key.pem");
    std::fs::write(&key, other_key).unwrap();
    let (code, err) = check(false);
    assert_eq!(code, Some(1));
    assert!(err.contains("key.pem does not match") && err.contains("cluster.bundle"), "{err}");
    // World-readable key: refused like the token file.
    write_bundle(&bundle, &ca, "admin").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = check(false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("key.pem"), "{err}");
    // Missing.
    std::fs::remove_file(bundle.join("cert.pem")).unwrap();
    let (code, err) = check(false);
    assert_eq!(code, Some(1));
    assert!(err.contains("cert.pem"), "{err}");
}

/// A pool of nodes only: `check` warns when the swarm gives it no node;
/// started with the API unreachable, it has no server: a client is
/// accepted and closed at once (counted in `no_server`), the page says the
/// pool has no server, and /healthz still answers 200 (the process serves
/// its other pools).
#[tokio::test]
async fn a_pool_of_nodes_only_with_no_node_is_warned_of_and_closes_its_clients() {
    let t = 13;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("swarm CA").unwrap();
    write_bundle(&dir.path().join("bundle"), &ca, "admin").unwrap();
    let api = SwarmApi::start(at(t, 200, 0), &ca, vec![StandNode::worker("w1", &ip(t, 5))]).await.unwrap();
    let cfg = write_config(dir.path(), &[api.addr], 443, &[]);
    // Blocking off the runtime: the stand-in answers on this test's thread.
    let run = {
        let cfg = cfg.clone();
        move || Command::new(BIN).arg("check").arg(&cfg).output().unwrap()
    };
    let out = tokio::task::spawn_blocking(run).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("pool.ucp: nodes: the swarm gives this pool no node"), "{err}");
    api.stop();
    let lb = Proc::lb(&cfg);
    let (admin, listener) = (lb.admin_addr().await, lb.listener_addr().await);
    let mut c = TcpStream::connect(listener).await.unwrap();
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = within("the client closed", c.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
    assert!(status(admin).await["pools"][0]["no_server"].as_u64().is_some_and(|n| n >= 1));
    let page = get(admin, "/").await;
    assert!(page.contains("serving, pool <a") && page.contains(">ucp</a> has no server"), "{page}");
    assert!(http_raw(admin, "GET", "/healthz", None).await.starts_with("HTTP/1.1 200"));
}

/// The CPU time of process `pid` so far (user + system), from /proc.
fn cpu_of(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = after.split_whitespace().skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    // USER_HZ: 100 on every Linux the tests run on.
    let tick = 100;
    std::time::Duration::from_secs_f64((f[0] + f[1]) as f64 / tick as f64)
}

/// Measures what a refresh costs the balancer: its CPU time (user +
/// system, /proc) over a few seconds of reads every 50 ms, per read, with
/// 7 managers and with 500 nodes (7 managers, 493 workers; a second pool
/// takes the workers), the list unchanged (the usual read), then changing
/// at every read (each a merge and a rebuild). `UCP_LB_BIN` runs another
/// binary (a release build). Prints; asserts nothing about the figures.
#[tokio::test]
#[ignore]
async fn measure_refresh_cost() {
    let bin = std::env::var("UCP_LB_BIN").unwrap_or_else(|_| BIN.to_owned());
    for (t, total) in [(5u8, 7usize), (6, 500)] {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("swarm CA").unwrap();
        write_bundle(&dir.path().join("bundle"), &ca, "admin").unwrap();
        let mut nodes: Vec<StandNode> = (0..total)
            .map(|i| {
                let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
                if i < 7 { StandNode::manager(&format!("m{i}"), &ip) } else { StandNode::worker(&format!("w{i}"), &ip) }
            })
            .collect();
        let api = SwarmApi::start(at(t, 200, 0), &ca, nodes.clone()).await.unwrap();
        let cfg = write_config(dir.path(), &[api.addr], 443, &[]);
        let text = std::fs::read_to_string(&cfg).unwrap().replace("refresh = \"200ms\"", "refresh = \"50ms\"")
            + "[pool.workers]\nnodes = { role = \"worker\", port = 443 }\n";
        std::fs::write(&cfg, text).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
        let lb = Proc::spawn(cmd, false);
        let admin = lb.admin_addr().await;
        let refreshes = async || status(admin).await["cluster"]["refreshes"].as_u64().unwrap_or(0);
        eventually_async("the first read", || async { refreshes().await > 2 }).await;
        for changing in [false, true] {
            let (c0, r0) = (cpu_of(lb.child.id()), refreshes().await);
            let start = std::time::Instant::now();
            // Pacing the measurement window (not synchronising): reads go
            // on every 50 ms meanwhile; when `changing`, the list changes
            // a little faster than that, so every read merges.
            while start.elapsed() < std::time::Duration::from_secs(10) {
                if changing {
                    let last = nodes.len() - 1;
                    nodes[last].availability =
                        if nodes[last].availability == "drain" { "active" } else { "drain" }.into();
                    api.set_nodes(nodes.clone());
                }
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            }
            let (c1, r1) = (cpu_of(lb.child.id()), refreshes().await);
            let n = r1.saturating_sub(r0).max(1);
            let per = (c1 - c0).as_secs_f64() * 1e3 / n as f64;
            eprintln!(
                "{total} nodes, list {}: {n} reads, {:.0} ms CPU, {per:.2} ms CPU per read",
                if changing { "changing at every read" } else { "unchanged" },
                (c1 - c0).as_secs_f64() * 1e3
            );
        }
    }
}
