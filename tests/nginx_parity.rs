//! Same choices as nginx: a pool migrated from nginx sends each client where
//! nginx did. Runs nginx's own `stream` module (smooth weighted round robin,
//! `hash $remote_addr consistent`) next to ucp-lb on the same backends.
//! Skipped when nginx is not installed, except under CI=true, where
//! .ci/run installs it.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::nginx::*;
use common::*;

/// Starts nginx with `upstream` as the body of `upstream b { ... }`,
/// listening on a free loopback port.
async fn nginx(bin: &Path, upstream: &str) -> (Nginx, SocketAddr) {
    let addr = free_addr();
    (
        start_nginx(bin, &format!(" upstream b {{\n{upstream}\n }}\n server {{ listen {addr}; proxy_pass b; }}")).await,
        addr,
    )
}

#[tokio::test]
async fn source_hash_sends_each_client_where_nginx_hash_consistent_does() {
    let Some(bin) = nginx_bin() else { return };
    let echoes = vec![Echo::start().await, Echo::start().await, Echo::start().await];
    let servers: String = echoes.iter().map(|e| format!("  server {};\n", e.addr)).collect();
    let (_ngx, ngx_addr) = nginx(&bin, &format!("  hash $remote_addr consistent;\n{servers}")).await;
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let lb = start_lb(&one_pool(&addrs, "balance = \"source_hash\"")).await;
    let mut differ = Vec::new();
    for host in 1..=60u8 {
        let src = [127, 0, 2, host];
        let a = served_by(&echoes, ngx_addr, src).await;
        let b = served_by(&echoes, lb.listener_addrs()[0], src).await;
        if a != b {
            differ.push(format!("127.0.2.{host}: nginx {a}, ucp-lb {b} ({addrs:?})"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[tokio::test]
async fn weighted_round_robin_follows_nginx_sequence() {
    let Some(bin) = nginx_bin() else { return };
    let echoes = vec![Echo::start().await, Echo::start().await, Echo::start().await];
    let weights = [5, 1, 2];
    let servers: String =
        echoes.iter().zip(weights).map(|(e, w)| format!("  server {} weight={w};\n", e.addr)).collect();
    let (_ngx, ngx_addr) = nginx(&bin, &servers).await;
    let list: Vec<String> =
        echoes.iter().zip(weights).map(|(e, w)| format!("{{ address = \"{}\", weight = {w} }}", e.addr)).collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\n",
        list.join(", ")
    );
    let lb = start_lb(&toml).await;
    let mut seq_nginx = Vec::new();
    let mut seq_lb = Vec::new();
    for _ in 0..16 {
        seq_nginx.push(served_by(&echoes, ngx_addr, [127, 0, 0, 1]).await);
    }
    for _ in 0..16 {
        seq_lb.push(served_by(&echoes, lb.listener_addrs()[0], [127, 0, 0, 1]).await);
    }
    assert_eq!(seq_lb, seq_nginx);
}

#[tokio::test]
async fn retries_and_passive_ejection_follow_nginx_with_a_refusing_server() {
    let Some(bin) = nginx_bin() else { return };
    // Weights 3, 6, 2; the weight-6 server refuses. nginx lowers its
    // effective weight on each failure, retries elsewhere, and ejects it
    // after max_fails: the clients' servers must come out the same.
    let echoes = vec![Echo::start().await, Echo::start().await];
    let refusing = refusing_addr();
    let addrs = [echoes[0].addr, refusing, echoes[1].addr];
    let weights = [3, 6, 2];
    let servers: String = addrs
        .iter()
        .zip(weights)
        .map(|(a, w)| format!("  server {a} weight={w} max_fails=3 fail_timeout=1h;\n"))
        .collect();
    let (_ngx, ngx_addr) = nginx(&bin, &servers).await;
    let list: Vec<String> =
        addrs.iter().zip(weights).map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}")).collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\nmax_fails = 3\nfail_timeout = \"1h\"\nretries = \"all\"\n",
        list.join(", ")
    );
    let lb = start_lb(&toml).await;
    let (mut seq_nginx, mut seq_lb) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        seq_nginx.push(served_by(&echoes, ngx_addr, [127, 0, 0, 1]).await);
    }
    for _ in 0..20 {
        seq_lb.push(served_by(&echoes, lb.listener_addrs()[0], [127, 0, 0, 1]).await);
    }
    assert_eq!(seq_lb, seq_nginx);
    assert!(server(&lb, refusing).ejected);
}
