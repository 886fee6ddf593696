//! Probe response handling: a real probe (HTTP over loopback) against a
//! server that answers with the fuzz input and closes. Whatever it sends,
//! the probe gives a verdict within its timeout, never a panic, and calls
//! the server healthy only when the answer has a 200 and a JSON `true`.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ucp_lb::config::{CheckKind, StatusMatch};
use ucp_lb::health::probe::ProbeTarget;

struct World {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        World { rt, listener, addr }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let target = ProbeTarget {
        addr: w.addr,
        kind: CheckKind::Http,
        path: "/_ping".into(),
        host: "fuzz".into(),
        server_name: rustls_pki_types::ServerName::try_from("fuzz").expect("a name").to_owned(),
        tls: None,
        expect_status: vec![StatusMatch::Code(200)],
        expect_body: None,
        expect_json: vec![("Healthy".into(), true.into())],
        timeout: Duration::from_secs(2),
        interval: Duration::from_secs(1),
        rise: 1,
        fall: 1,
        proxy_protocol: None,
        label: "fuzz".into(),
    };
    let outcome = w.rt.block_on(async {
        let server = async {
            let Ok((mut s, _)) = w.listener.accept().await else { return };
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let _ = s.write_all(data).await;
            let _ = s.shutdown().await;
            // Hold the socket until the probe is done with it.
            let _ = s.read(&mut req).await;
        };
        let (_, outcome) = tokio::join!(server, ucp_lb::health::probe::probe(&target));
        outcome
    });
    if outcome.failure.is_none() {
        let text = String::from_utf8_lossy(data);
        assert!(text.contains("200") && text.contains("true"), "healthy from:\n{text}");
    }
});
