//! A PROXY protocol listener's clients (`proxy_protocol = true`): each
//! opens with a header (`wire::proxy_header` reads it, bounded in bytes
//! and time), and whose address the connection goes on with is decided
//! here, as nginx's stream `set_real_ip_from` does: the header's source
//! when the connecting peer is in `real_ip_from` and the header names an
//! IP address; the peer's own otherwise (a source not trusted, `LOCAL`,
//! `UNKNOWN`, `AF_UNIX`). What the listener does with that address
//! (access rules, per-client limits, the pick, the log) is `listener.rs`'s,
//! which passes it on as the client's address; the peer stays beside it
//! in a [`Via`] for the access log and the hand-over.
//!
//! The counts per listener: headers by version and command, refusals by
//! reason, and headers whose address was not believed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::TcpStream;

use crate::config::ProxyProtocol;
use crate::wire::admission;
use crate::wire::proxy_header::{self, Command, Failed, Version, Via};

const VERSIONS: [Version; 2] = [Version::V1, Version::V2];
const COMMANDS: [Command; 3] = [Command::Proxy, Command::Local, Command::Unknown];

/// One listener's PROXY protocol counters, kept across reloads and moved
/// to a successor ([`Tally`]).
#[derive(Debug, Default)]
pub struct Counts {
    headers: [[AtomicU64; 3]; 2],
    refused: [AtomicU64; 5],
    untrusted: AtomicU64,
}

/// [`Counts`] read at one time: headers by version and command, refused
/// by reason, and headers read from a source not trusted whose address
/// was not believed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub headers: [[u64; 3]; 2],
    pub refused: [u64; 5],
    pub untrusted: u64,
}

impl Tally {
    /// Each (version, command) with its count.
    pub fn headers(&self) -> impl Iterator<Item = (Version, Command, u64)> + '_ {
        VERSIONS
            .iter()
            .enumerate()
            .flat_map(move |(v, &ver)| COMMANDS.iter().enumerate().map(move |(c, &cmd)| (ver, cmd, self.headers[v][c])))
    }

    /// Each reason with its count.
    pub fn refused(&self) -> impl Iterator<Item = (Failed, u64)> + '_ {
        Failed::ALL.iter().zip(self.refused).map(|(&f, n)| (f, n))
    }

    pub fn total_refused(&self) -> u64 {
        self.refused.iter().sum()
    }
}

fn version_index(v: Version) -> usize {
    VERSIONS.iter().position(|&x| x == v).unwrap_or(0)
}

fn command_index(c: Command) -> usize {
    COMMANDS.iter().position(|&x| x == c).unwrap_or(0)
}

fn failed_index(f: Failed) -> usize {
    Failed::ALL.iter().position(|&x| x == f).unwrap_or(0)
}

impl Counts {
    pub fn tally(&self) -> Tally {
        Tally {
            headers: self.headers.each_ref().map(|row| row.each_ref().map(|n| n.load(Relaxed))),
            refused: self.refused.each_ref().map(|n| n.load(Relaxed)),
            untrusted: self.untrusted.load(Relaxed),
        }
    }

    /// Counts that go on from `t` (a predecessor's).
    pub fn from_tally(t: &Tally) -> Counts {
        Counts {
            headers: t.headers.map(|row| row.map(AtomicU64::new)),
            refused: t.refused.map(AtomicU64::new),
            untrusted: AtomicU64::new(t.untrusted),
        }
    }

    /// A client closed for want of a valid header.
    pub fn refused(&self, f: Failed) {
        self.refused[failed_index(f)].fetch_add(1, Relaxed);
    }
}

/// Reads `client`'s header (whose peer is `peer`) as `pp` says, counting
/// it, and returns the address the connection goes on with and what the
/// header said; on failure the caller closes and counts the client.
pub async fn accept(
    client: &TcpStream,
    peer: SocketAddr,
    pp: &ProxyProtocol,
    counts: &Counts,
) -> Result<(SocketAddr, Via), Failed> {
    let header = proxy_header::read(client, pp.max_header, pp.timeout).await?;
    counts.headers[version_index(header.version)][command_index(header.command)].fetch_add(1, Relaxed);
    let (source, destination) = header.addresses.unzip();
    let via = Via { peer, source, destination };
    Ok((believed(peer, source, pp, counts), via))
}

/// The address a connection from `peer` whose header names `source` goes
/// on with.
fn believed(peer: SocketAddr, source: Option<SocketAddr>, pp: &ProxyProtocol, counts: &Counts) -> SocketAddr {
    let Some(source) = source else { return peer };
    if pp.trusts(admission::client_ip(peer.ip())) {
        return source;
    }
    counts.untrusted.fetch_add(1, Relaxed);
    peer
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pp(from: &[&str]) -> ProxyProtocol {
        ProxyProtocol {
            real_ip_from: from.iter().map(|s| crate::config::rules::parse_source(s).unwrap()).collect(),
            timeout: Duration::from_secs(5),
            max_header: 4096,
        }
    }

    #[test]
    fn only_a_trusted_peer_s_header_moves_the_address() {
        let (peer, src) = ("10.1.2.3:4000".parse().unwrap(), "127.0.0.77:5000".parse().unwrap());
        let counts = Counts::default();
        assert_eq!(believed(peer, Some(src), &pp(&["10.0.0.0/8"]), &counts), src);
        assert_eq!(believed(peer, Some(src), &pp(&["192.0.2.7"]), &counts), peer);
        assert_eq!(believed(peer, Some(src), &pp(&[]), &counts), peer);
        assert_eq!(believed(peer, None, &pp(&["10.0.0.0/8"]), &counts), peer, "LOCAL, UNKNOWN");
        // An IPv4 peer on an IPv6 socket is matched as IPv4.
        let mapped = "[::ffff:10.1.2.3]:4000".parse().unwrap();
        assert_eq!(believed(mapped, Some(src), &pp(&["10.0.0.0/8"]), &counts), src);
        assert_eq!(counts.tally().untrusted, 2);
    }

    #[test]
    fn a_tally_goes_on_in_a_successor() {
        let counts = Counts::default();
        counts.headers[1][1].fetch_add(3, Relaxed);
        counts.refused(Failed::TooLarge);
        let t = counts.tally();
        let back: Tally = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(Counts::from_tally(&back).tally(), t);
        assert!(t.headers().any(|(v, c, n)| (v, c, n) == (Version::V2, Command::Local, 3)));
        assert_eq!(t.refused().find(|r| r.1 > 0), Some((Failed::TooLarge, 1)));
    }
}
