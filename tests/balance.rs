//! Which server gets a client: weights, backup, drain, max_conns, least_conn,
//! source_hash, through a running LB.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;
use tokio::net::{TcpSocket, TcpStream};

fn servers(list: &[(SocketAddr, &str)]) -> String {
    let entries: Vec<String> = list.iter().map(|(a, extra)| format!("{{ address = \"{a}\"{extra} }}")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\n",
        entries.join(", ")
    )
}

#[tokio::test]
async fn weights_share_clients_in_proportion() {
    let (a, b, c) = (Echo::start().await, Echo::start().await, Echo::start().await);
    let lb = start_lb(&servers(&[(a.addr, ", weight = 3"), (b.addr, ", weight = 1"), (c.addr, ", weight = 1")])).await;
    for _ in 0..500 {
        round_trip(lb.listener_addrs()[0]).await.unwrap();
    }
    let (na, nb, nc) = (a.count(), b.count(), c.count());
    assert!((285..=315).contains(&na), "weight 3 of 5: {na}");
    assert!((90..=110).contains(&nb) && (90..=110).contains(&nc), "weight 1 of 5: {nb} {nc}");
}

#[tokio::test]
async fn backup_takes_clients_only_when_no_primary_is_eligible() {
    let (a, bk) = (Echo::start().await, Echo::start().await);
    let lb = start_lb(&format!(
        "{}max_fails = 1\nfail_timeout = \"1h\"\n",
        servers(&[(a.addr, ""), (bk.addr, ", backup = true")])
    ))
    .await;
    let addr = lb.listener_addrs()[0];
    for _ in 0..20 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!((a.count(), bk.count()), (20, 0));
    a.stop();
    for _ in 0..20 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(bk.count(), 20, "primary refusing and ejected: the backup serves");
}

#[tokio::test]
async fn drained_and_down_servers_get_no_new_clients() {
    let (a, b, c) = (Echo::start().await, Echo::start().await, Echo::start().await);
    let lb = start_lb(&servers(&[(a.addr, ""), (b.addr, ", state = \"drain\""), (c.addr, ", state = \"down\"")])).await;
    for _ in 0..30 {
        round_trip(lb.listener_addrs()[0]).await.unwrap();
    }
    assert_eq!((a.count(), b.count(), c.count()), (30, 0, 0));
}

#[tokio::test]
async fn max_conns_caps_open_connections_per_server() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let lb = start_lb(&servers(&[(a.addr, ", max_conns = 2"), (b.addr, "")])).await;
    let addr = lb.listener_addrs()[0];
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        open.push(s);
    }
    assert_eq!(server(&lb, a.addr).active, 2);
    assert_eq!(server(&lb, b.addr).active, 6);
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn max_conns_everywhere_reached_closes_the_client() {
    let a = Echo::start().await;
    let lb = start_lb(&servers(&[(a.addr, ", max_conns = 1")])).await;
    let addr = lb.listener_addrs()[0];
    let mut first = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut first).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(within("closed", closed(&mut second)).await);
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn least_conn_keeps_held_connections_level() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let lb = start_lb(&format!("{}balance = \"least_conn\"\n", servers(&[(a.addr, ""), (b.addr, "")]))).await;
    let addr = lb.listener_addrs()[0];
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        held.push(s);
        let (act_a, act_b) = (server(&lb, a.addr).active, server(&lb, b.addr).active);
        assert!(act_a.abs_diff(act_b) <= 1, "least_conn keeps them level: {act_a} / {act_b}");
    }
    assert_eq!((a.count(), b.count()), (4, 4));
}

#[tokio::test]
async fn least_conn_fills_the_server_whose_clients_left() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let lb = start_lb(&format!("{}balance = \"least_conn\"\n", servers(&[(a.addr, ""), (b.addr, "")]))).await;
    let addr = lb.listener_addrs()[0];
    let mut held: Vec<(TcpStream, bool)> = Vec::new();
    for _ in 0..6 {
        let before = a.count();
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        held.push((s, a.count() > before));
    }
    // Every client on a leaves; the next three all go to a.
    held.retain(|(_, on_a)| !on_a);
    eventually("a empty", || server(&lb, a.addr).active == 0).await;
    let before_a = a.count();
    let mut more = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        more.push(s);
    }
    assert_eq!(a.count() - before_a, 3, "all three to the idle server");
}

#[tokio::test]
async fn random_two_spreads_clients_and_avoids_the_busy_server() {
    let (a, b, c) = (Echo::start().await, Echo::start().await, Echo::start().await);
    let lb =
        start_lb(&format!("{}balance = \"random_two\"\n", servers(&[(a.addr, ""), (b.addr, ""), (c.addr, "")]))).await;
    let addr = lb.listener_addrs()[0];
    let mut held = Vec::new();
    for _ in 0..90 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        held.push(s);
    }
    let act: Vec<u32> = [a.addr, b.addr, c.addr].iter().map(|&x| server(&lb, x).active).collect();
    // With two choices, held connections stay close to level; pure random
    // leaves one server far behind. Simulated, 90 clients: two choices
    // never spread more than 6 in 300,000 runs (5 or more in 1 of 1,200);
    // pure random spreads more than 8 in half of the runs. (30 clients and
    // a bound of 4 failed about 1 run in 1,200.)
    let (min, max) = (*act.iter().min().unwrap(), *act.iter().max().unwrap());
    assert!(max - min <= 8, "spread: {act:?}");
}

/// Connects from a chosen loopback source address.
async fn connect_from(src: [u8; 4], lb: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    s.connect(lb).await.unwrap()
}

#[tokio::test]
async fn source_hash_keeps_each_client_on_one_server() {
    let (a, b, c) = (Echo::start().await, Echo::start().await, Echo::start().await);
    let lb =
        start_lb(&format!("{}balance = \"source_hash\"\n", servers(&[(a.addr, ""), (b.addr, ""), (c.addr, "")]))).await;
    let addr = lb.listener_addrs()[0];
    let echoes = [&a, &b, &c];
    let mut home: HashMap<u8, usize> = HashMap::new();
    for round in 0..3 {
        for host in 2..202u8 {
            let before: Vec<usize> = echoes.iter().map(|e| e.count()).collect();
            let mut s = connect_from([127, 0, 1, host], addr).await;
            echo_once(&mut s).await.unwrap();
            let got = (0..3).find(|&i| echoes[i].count() > before[i]).unwrap();
            if round == 0 {
                home.insert(host, got);
            } else {
                assert_eq!(home[&host], got, "client 127.0.1.{host} moved");
            }
        }
    }
    let per: Vec<usize> = (0..3).map(|i| home.values().filter(|&&v| v == i).count()).collect();
    // The ring depends on the echo servers' ports. With 40 clients one
    // server got 3 in a CI run (about 1 port draw in 1,500 does that); with
    // 200, 100,000 simulated draws of three ports never gave a server fewer
    // than 37.
    assert!(per.iter().all(|&n| n >= 20), "200 clients spread over three servers: {per:?}");
}
