//! The access log: one line per finished connection saying why it ended;
//! reopened on SIGUSR1 without losing a line; a writer that cannot keep up
//! drops and counts lines while traffic goes on.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path).iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// A server that writes a greeting and closes at once, and one that
/// resets every connection after a byte.
async fn closing_server() -> SocketAddr {
    scripted(|mut s| async move {
        let _ = s.write_all(b"bye").await;
    })
    .await
}

async fn resetting_server() -> SocketAddr {
    scripted(|mut s| async move {
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
        let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    })
    .await
}

/// Every way a connection can end, once each, in a JSON access log: the
/// code, the words, the server and the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_connection_ends_is_logged_once_with_its_code() {
    let echo = Echo::start().await;
    let (closing, resetting, refusing) = (closing_server().await, resetting_server().await, refusing_addr());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let listener =
        |pool: &str, extra: &str| format!("[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"{pool}\"\n{extra}");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[defaults]\naccess_log = \"{}\"\naccess_log_format = \"json\"\n\
         {}{}{}{}{}{}{}\
         [pool.echo]\nservers = [\"{}\"]\n[pool.quiet]\nservers = [\"{}\"]\nidle_timeout = \"200ms\"\n\
         [pool.closing]\nservers = [\"{closing}\"]\n[pool.resetting]\nservers = [\"{resetting}\"]\n\
         [pool.dead]\nservers = [\"{refusing}\"]\n[pool.none]\nservers = [{{ address = \"{}\", state = \"down\" }}]\nall_down = \"reject\"\n\
         [pool.one]\nservers = [\"{}\"]\n",
        log.display(),
        listener("echo", ""),
        listener("quiet", ""),
        listener("closing", ""),
        listener("resetting", ""),
        listener("dead", ""),
        listener("none", ""),
        listener("one", "max_connections = 1\n"),
        echo.addr,
        echo.addr,
        echo.addr,
        echo.addr,
    );
    let lb = start_lb(&toml).await;
    let at = lb.listener_addrs();
    // client_closed: the client sends, half-closes, and the echo follows.
    let mut c = TcpStream::connect(at[0]).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("echo", c.read_to_end(&mut back)).await.unwrap();
    drop(c);
    // idle_timeout
    let mut c = TcpStream::connect(at[1]).await.unwrap();
    assert!(within("idle close", closed(&mut c)).await);
    // server_closed
    let mut c = TcpStream::connect(at[2]).await.unwrap();
    let mut bye = Vec::new();
    within("greeting", c.read_to_end(&mut bye)).await.unwrap();
    drop(c);
    // server_reset
    let mut c = TcpStream::connect(at[3]).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 8];
    let _ = within("reset", c.read(&mut buf)).await;
    drop(c);
    // connect_failed, no_server: closed at once.
    for a in [at[4], at[5]] {
        let mut c = TcpStream::connect(a).await.unwrap();
        assert!(within("closed at once", closed(&mut c)).await);
    }
    // max_connections: one held, the next closed at once.
    let mut held = TcpStream::connect(at[6]).await.unwrap();
    echo_once(&mut held).await.unwrap();
    let mut c = TcpStream::connect(at[6]).await.unwrap();
    assert!(within("over the limit", closed(&mut c)).await);
    // client_reset: the held one resets.
    SockRef::from(&held).set_linger(Some(Duration::ZERO)).unwrap();
    drop(held);

    let want = [
        "client_closed",
        "idle_timeout",
        "server_closed",
        "server_reset",
        "connect_failed",
        "no_server",
        "max_connections",
        "client_reset",
    ];
    eventually("a line for each", || json_lines(&log).len() >= want.len()).await;
    let got = json_lines(&log);
    let codes: Vec<&str> = got.iter().filter_map(|l| l["end"].as_str()).collect();
    for code in want {
        assert_eq!(codes.iter().filter(|c| **c == code).count(), 1, "{code} once: {codes:?}");
    }
    let line = |code: &str| got.iter().find(|l| l["end"] == code).unwrap().clone();
    let ok = line("client_closed");
    assert_eq!((ok["pool"].as_str(), ok["server"].as_str()), (Some("echo"), Some(echo.addr.to_string().as_str())));
    assert_eq!(
        (ok["bytes_from_client"].as_u64(), ok["bytes_to_client"].as_u64(), ok["status"].as_u64()),
        (Some(4), Some(4), Some(200))
    );
    let failed = line("connect_failed");
    assert_eq!(failed["end_words"], "connect failed on every server tried (1)");
    assert_eq!(
        (failed["status"].as_u64(), failed["tried"][0].as_str()),
        (Some(502), Some(refusing.to_string().as_str()))
    );
    assert_eq!(line("no_server")["status"], 502);
    assert_eq!(line("max_connections")["status"], 503);
    assert_eq!(line("server_closed")["bytes_to_client"], 3);
}

/// logrotate's way: the file is moved, SIGUSR1 sent; the lines before are
/// in the moved file, the lines after in a new one at the path, none lost.
/// A connection still open when the shutdown grace ends is logged as cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_and_no_line_is_lost() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        one_pool(&[echo.addr], "").replacen(
            "[[listener]]\n",
            &format!("[defaults]\nshutdown_timeout = \"200ms\"\n[[listener]]\naccess_log = \"{}\"\n", log.display()),
            1,
        ),
    )
    .unwrap();
    let mut lb = Proc::lb(&path);
    let addr = lb.listener_addr().await;
    for _ in 0..50 {
        round_trip(addr).await.unwrap();
    }
    eventually("50 lines", || lines(&log).len() == 50).await;
    let moved = dir.path().join("access.log.1");
    std::fs::rename(&log, &moved).unwrap();
    lb.signal("USR1");
    lb.wait_for_line("SIGUSR1: reopening").await;
    for _ in 0..50 {
        round_trip(addr).await.unwrap();
    }
    eventually("50 lines in the new file", || lines(&log).len() == 50).await;
    assert_eq!(lines(&moved).len(), 50, "the moved file kept its lines and got no more");
    assert!(lines(&log).iter().all(|l| l.contains(" client_closed ")), "{:?}", lines(&log));
    // One connection held open through SIGTERM: cut at the grace's end.
    let mut held = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut held).await.unwrap();
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
    let last = lines(&log);
    assert_eq!(last.len(), 51, "{last:?}");
    assert!(last[50].contains(" shutdown ") && last[50].contains("end of the shutdown grace"), "{}", last[50]);
}

/// A writer that cannot keep up (its file a FIFO nobody reads, as a full
/// disk or a hung mount would be): lines are dropped and counted, and every
/// client is served as fast as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_drops_and_counts_lines_and_traffic_goes_on() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        one_pool(&[echo.addr], "").replacen(
            "[[listener]]\n",
            &format!("[[listener]]\naccess_log = \"{}\"\n", fifo.display()),
            1,
        ),
    )
    .unwrap();
    let lb = Proc::lb(&path);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    // More connections than the queue holds (4,096), from four clients.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..1_100 {
                within("a round trip while the log is stuck", round_trip(addr)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dropped = || async move {
        let m = http_raw(admin, "GET", "/metrics", None).await;
        m.lines()
            .find_map(|l| l.strip_prefix("ucp_lb_access_log_lines_total{result=\"dropped\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually_async("lines dropped and counted", || async { dropped().await >= 4_400 - 4_096 - 1 }).await;
    eprintln!("stuck access log: 4,400 clients served, {} lines dropped", dropped().await);
}
