//! Who may connect and how much: a listener's `access` rules (IPv4 and
//! IPv6 prefixes, in order), `max_connections_per_client` and
//! `max_connection_rate_per_client`, over real sockets from many loopback
//! source addresses (127.0.0.0/8 is all loopback on Linux).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use ucp_lb::view::ListenerStatus;

/// A connection to `lb` from `src` (port chosen by the kernel).
async fn connect_from(src: std::net::IpAddr, lb: SocketAddr) -> TcpStream {
    let s = if src.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    within("connect", s.connect(lb)).await.unwrap()
}

/// Whether a client from `src` is served (its bytes echoed) or closed at
/// once (EOF or reset before any byte comes back).
async fn served_from(src: &str, lb: SocketAddr) -> bool {
    let mut s = connect_from(src.parse().unwrap(), lb).await;
    within("echo or close", echo_once(&mut s)).await.is_ok()
}

/// Reads nothing until the peer closes: the proxy closed it without
/// connecting it anywhere.
async fn closed_at_once(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(within("the close", s.read(&mut b)).await, Ok(0) | Err(_))
}

fn listener(lb: &ucp_lb::Running, local: SocketAddr) -> ListenerStatus {
    lb.lb.view().listeners.into_iter().find(|l| l.local == local).expect("the listener is in the status view")
}

#[tokio::test]
async fn access_rules_apply_in_order_to_ipv4_and_ipv6_clients_and_refusals_are_counted() {
    let echo = Echo::start().await;
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let mut toml = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         access = [\"deny 127.0.0.3\", \"allow 127.0.0.0/29\", \"allow 127.0.1.0/24\", \"deny all\"]\n",
    );
    if ipv6 {
        // ::1 is refused by the first and let in by the second, each by a
        // prefix rule ahead of a broader one.
        toml.push_str(
            "[[listener]]\nbind = \"[::1]:0\"\npool = \"p\"\naccess = [\"deny ::/127\", \"allow ::/0\"]\n\
             [[listener]]\nbind = \"[::1]:0\"\npool = \"p\"\naccess = [\"deny 2001:db8::/32\", \"allow ::1/128\", \"deny all\"]\n",
        );
    }
    toml.push_str(&format!("[pool.p]\nservers = [\"{}\"]\n", echo.addr));
    let lb = start_lb(&toml).await;
    let addrs = lb.listener_addrs();
    let v4 = addrs[0];
    let cases = [
        ("127.0.0.1", true),
        ("127.0.0.2", true),
        ("127.0.0.3", false), // denied before the /29 allows it
        ("127.0.0.7", true),
        ("127.0.0.8", false), // outside the /29
        ("127.0.1.200", true),
        ("127.0.2.1", false),
    ];
    for (src, expected) in cases {
        assert_eq!(served_from(src, v4).await, expected, "client {src}");
    }
    let refused = cases.iter().filter(|(_, ok)| !ok).count() as u64;
    let st = listener(&lb, v4);
    assert_eq!(st.rejected_access, refused, "{st:?}");
    assert_eq!(st.accepted, cases.len() as u64);
    // Refused clients never reached the server.
    assert_eq!(echo.count(), cases.len() - refused as usize);
    assert_eq!(st.access.len(), 4);
    if ipv6 {
        assert!(!served_from("::1", addrs[1]).await, "::1 on the listener that denies ::/127");
        assert!(served_from("::1", addrs[2]).await, "::1 on the listener that allows ::1/128");
        assert_eq!((listener(&lb, addrs[1]).rejected_access, listener(&lb, addrs[2]).rejected_access), (1, 0));
    } else {
        eprintln!("no IPv6 loopback here: the IPv6 rules were not exercised");
    }
    let metrics = http_raw(lb.admin_addr().unwrap(), "GET", "/metrics", None).await;
    let series = format!("ucp_lb_listener_rejected_connections_total{{listener=\"{v4}\",reason=\"denied\"}} {refused}");
    assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
}

#[tokio::test]
async fn the_sixth_connection_of_one_client_is_closed_while_other_clients_are_served() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "").replacen(
        "pool = \"p\"\n",
        "pool = \"p\"\nmax_connections_per_client = 5\n",
        1,
    ))
    .await;
    let addr = lb.listener_addrs()[0];
    // Five client addresses; the first holds five connections, the others
    // one to four.
    let clients: Vec<String> = (11..=15).map(|h| format!("127.0.3.{h}")).collect();
    let mut held = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for _ in 0..(5 - i) {
            let mut s = connect_from(c.parse().unwrap(), addr).await;
            within("echo", echo_once(&mut s)).await.unwrap();
            held.push(s);
        }
    }
    let mut sixth = connect_from(clients[0].parse().unwrap(), addr).await;
    assert!(closed_at_once(&mut sixth).await, "the sixth connection of {} is closed", clients[0]);
    // Every other client may still open one more, and is served.
    for c in &clients[1..] {
        let mut s = connect_from(c.parse().unwrap(), addr).await;
        within("echo", echo_once(&mut s)).await.unwrap_or_else(|e| panic!("{c} refused: {e}"));
        held.push(s);
    }
    let st = listener(&lb, addr);
    assert_eq!((st.rejected_per_client, st.clients, st.max_connections_per_client), (1, 5, 5), "{st:?}");
    assert_eq!(st.active, 5 + 4 + 3 + 2 + 1 + 4);
    // Once a connection of the first closes, it may open one again.
    drop(held.remove(0));
    eventually_async(&format!("{} served again after one of its connections closed", clients[0]), || async {
        let mut s = connect_from(clients[0].parse().unwrap(), addr).await;
        echo_once(&mut s).await.is_ok()
    })
    .await;
    // The clients leave: the table is empty again.
    drop(held);
    eventually("no client left in the table", || listener(&lb, addr).clients == 0).await;
    let st = listener(&lb, addr);
    assert_eq!(st.active, 0, "{st:?}");
}

#[tokio::test]
async fn new_connections_per_second_of_one_client_are_capped() {
    let echo = Echo::start().await;
    const RATE: u64 = 5;
    let lb = start_lb(&one_pool(&[echo.addr], "").replacen(
        "pool = \"p\"\n",
        &format!("pool = \"p\"\nmax_connection_rate_per_client = {RATE}\n"),
        1,
    ))
    .await;
    let addr = lb.listener_addrs()[0];
    // Connect from one address until one is refused: a bucket of RATE
    // refilled at RATE a second admits at most RATE + RATE x elapsed.
    let start = Instant::now();
    let mut admitted = 0u64;
    let mut refused = false;
    while start.elapsed() < Duration::from_secs(10) {
        if served_from("127.0.4.1", addr).await {
            admitted += 1;
        } else {
            refused = true;
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(refused, "{admitted} connections in {elapsed:.2}s, none refused");
    assert!(
        admitted >= RATE && admitted as f64 <= RATE as f64 + (RATE as f64 * elapsed).ceil(),
        "{admitted} admitted in {elapsed:.2}s"
    );
    // Another address has a bucket of its own.
    assert!(served_from("127.0.4.2", addr).await);
    let st = listener(&lb, addr);
    assert_eq!(st.rejected_client_rate, 1, "{st:?}");
    // Its bucket refills: served again within a second or so, and the
    // table forgets both once their buckets are full.
    eventually_async("127.0.4.1 served again", || served_from("127.0.4.1", addr)).await;
    eventually("the table is empty once the buckets are full", || listener(&lb, addr).clients == 0).await;
}

#[tokio::test]
async fn a_reload_changes_the_rules_for_new_clients_while_open_ones_stay() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let base = one_pool(&[echo.addr], "");
    let with = |rules: &str| base.replacen("pool = \"p\"\n", &format!("pool = \"p\"\naccess = [{rules}]\n"), 1);
    std::fs::write(&path, with("\"allow 127.0.5.0/24\", \"deny all\"")).unwrap();
    let lb = start_lb_file(&path).await;
    let addr = lb.listener_addrs()[0];
    let mut open = connect_from("127.0.5.1".parse().unwrap(), addr).await;
    echo_once(&mut open).await.unwrap();
    assert!(!served_from("127.0.6.1", addr).await);

    std::fs::write(&path, with("\"allow 127.0.6.0/24\", \"deny all\"")).unwrap();
    lb.reload().await.unwrap();
    assert!(served_from("127.0.6.1", addr).await, "allowed by the new rules");
    assert!(!served_from("127.0.5.2", addr).await, "denied by the new rules");
    // The connection accepted under the old rules goes on.
    echo_once(&mut open).await.unwrap();
    assert_eq!(listener(&lb, addr).access, ["allow 127.0.6.0/24", "deny all"]);
}

#[test]
fn check_reports_every_bad_rule_at_its_place_and_warns_of_rules_that_cannot_apply() {
    let toml = "[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
                access = [\"allow 10.0.0.0/33\", \"permit 10.0.0.1\", \"deny all\", \"allow 10.1.0.0/16\"]\n\
                max_connections_per_client = 0\n\
                [pool.p]\nservers = [\"127.0.0.1:9\"]\n";
    let err = ucp_lb::config::parse(toml, "lb.toml").unwrap_err().to_string();
    for want in [
        "lb.toml:4:11: listener[0].access[0]",
        "lb.toml:4:32: listener[0].access[1]",
        "listener[0].max_connections_per_client: expected an integer >= 1, found 0",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    let ok = "[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess = [\"deny all\", \"allow 10.1.0.0/16\"]\n\
              [pool.p]\nservers = [\"127.0.0.1:9\"]\n";
    let cfg = ucp_lb::config::parse(ok, "lb.toml").unwrap();
    let warnings: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.contains("listener[0].access[1]") && w.contains("never applies")),
        "{warnings:?}"
    );
    let only_allow = ok.replace("\"deny all\", ", "");
    let cfg = ucp_lb::config::parse(&only_allow, "lb.toml").unwrap();
    assert!(cfg.warnings.iter().any(|w| w.to_string().contains("admits everyone")), "{:?}", cfg.warnings);
}

/// Two listeners naming one `[limit.NAME]` of 2 connections per client:
/// a client holding 2 through the first is refused on the second (counted
/// there, logged as `max_connections_per_client`), other clients are
/// served, and a reload keeps the shared table with its counts.
#[tokio::test]
async fn listeners_naming_one_limit_share_its_counts_across_a_reload() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = (dir.path().join("lb.toml"), dir.path().join("access.log"));
    let config = |rate: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [defaults]\naccess_log = \"{}\"\naccess_log_format = \"$remote_addr $end\"\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\nlimit = \"ucp\"\n\
             [[listener]]\nbind = \"127.0.0.2:0\"\npool = \"p\"\nlimit = \"ucp\"\n\
             [limit.ucp]\nmax_connections_per_client = 2\n{rate}\
             [pool.p]\nservers = [\"{}\"]\n",
            log.display(),
            echo.addr
        )
    };
    std::fs::write(&path, config("")).unwrap();
    let lb = start_lb_file(&path).await;
    let [a, b] = lb.listener_addrs()[..] else { panic!("two listeners") };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.9.1".parse().unwrap(), a).await;
        within("echo", echo_once(&mut s)).await.unwrap();
        held.push(s);
    }
    let mut third = connect_from("127.0.9.1".parse().unwrap(), b).await;
    assert!(closed_at_once(&mut third).await, "2 open through A: refused on B");
    let sb = listener(&lb, b);
    assert_eq!((sb.clients, sb.active, sb.max_connections_per_client), (1, 0, 2), "B sees the client A holds: {sb:?}");
    assert!(served_from("127.0.9.2", b).await, "another client is served on B");
    let (sa, sb) = (listener(&lb, a), listener(&lb, b));
    assert_eq!((sa.rejected_per_client, sb.rejected_per_client), (0, 1), "{sa:?} {sb:?}");
    eventually("the refusal in the access log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("127.0.9.1 max_connections_per_client"))
    })
    .await;
    let metrics = http_raw(lb.admin_addr().unwrap(), "GET", "/metrics", None).await;
    let series = format!(
        "ucp_lb_listener_rejected_connections_total{{listener=\"{b}\",reason=\"max_connections_per_client\"}} 1"
    );
    assert!(metrics.contains(&series), "{series} not in:\n{metrics}");

    // A reload (the limit gains a rate) keeps the table: still refused,
    // on either listener.
    std::fs::write(&path, config("max_connection_rate_per_client = 100\n")).unwrap();
    lb.reload().await.unwrap();
    for (lst, name) in [(b, "B"), (a, "A")] {
        let mut s = connect_from("127.0.9.1".parse().unwrap(), lst).await;
        assert!(closed_at_once(&mut s).await, "after the reload, refused on {name}");
    }
    assert_eq!(listener(&lb, b).max_connection_rate_per_client, 100);
    // One closes: the client may open one more, through either.
    drop(held.remove(0));
    eventually_async("127.0.9.1 served on B once one of its connections closed", || served_from("127.0.9.1", b)).await;
    drop(held);
}

#[test]
fn check_names_a_missing_limit_a_rate_beside_one_and_an_unused_one() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\nLIMIT\n\
                [limit.ucp]\nmax_connections_per_client = 0\n\
                [limit.spare]\nmax_connections_per_client = 3\n\
                [pool.p]\nservers = [\"127.0.0.1:9\"]\n";
    let with = |l: &str| base.replace("LIMIT", l);
    let err = ucp_lb::config::parse(&with("limit = \"nope\""), "lb.toml").unwrap_err().to_string();
    for want in [
        "listener[0].limit: no limit named \"nope\" (defined: spare, ucp)",
        "limit.ucp.max_connections_per_client: expected an integer >= 1, found 0",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    // A rate beside a limit is the limit's to set (one bucket per client).
    let rate = with("limit = \"spare\"\nmax_connection_rate_per_client = 4").replace(" = 0\n", " = 1\n");
    let err = ucp_lb::config::parse(&rate, "lb.toml").unwrap_err().to_string();
    assert!(err.contains("listener[0].max_connection_rate_per_client: beside limit = \"spare\""), "{err}");
    let ok = with("limit = \"spare\"").replace(" = 0\n", " = 1\n");
    let cfg = ucp_lb::config::parse(&ok, "lb.toml").unwrap();
    assert_eq!((cfg.listeners[0].per_client.open, cfg.listeners[0].limit.as_deref()), (3, Some("spare")));
    // Its own number over the shared counts (nginx's limit_conn ZONE N).
    let own = with("limit = \"spare\"\nmax_connections_per_client = 5").replace(" = 0\n", " = 1\n");
    let cfg = ucp_lb::config::parse(&own, "lb.toml").unwrap();
    assert_eq!((cfg.listeners[0].per_client.open, cfg.listeners[0].limit.as_deref()), (5, Some("spare")));
    let unused: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
    assert!(unused.iter().any(|w| w.contains("limit.ucp") && w.contains("no listener names this limit")), "{unused:?}");
}
