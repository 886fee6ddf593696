//! nginx's `hash $remote_addr`: map-based (source_hash_map) and
//! consistent (source_hash, on a ring of points per server name).

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::mask::Mask;
use super::{Pool, Server};

impl Pool {
    /// nginx's `hash $remote_addr` without `consistent` (HAProxy calls it
    /// map-based): the CRC32 of the client address, folded as Cache::Memcached
    /// does, modulo the total weight of the primary servers picks one; if it
    /// cannot take the client (not eligible, or tried), the key is hashed
    /// again with the attempt number in front, up to 20 more times, then
    /// round robin. As `ngx_stream_upstream_get_hash_peer`.
    pub(super) fn source_hash_map(&self, mask: &Mask, client: IpAddr, now: Instant) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.servers.len()).filter(|&i| !self.servers[i].standby()).collect();
        let total: u64 = primaries.iter().map(|&i| u64::from(self.servers[i].weight)).sum();
        if primaries.len() < 2 || total == 0 {
            return self.round_robin(mask, now);
        }
        let key = client.to_canonical().to_string();
        let mut hash: u32 = 0;
        for rehash in 0..=20u32 {
            let mut h = crc32fast::Hasher::new();
            if rehash > 0 {
                h.update(rehash.to_string().as_bytes());
            }
            h.update(key.as_bytes());
            hash = hash.wrapping_add((h.finalize() >> 16) & 0x7fff);
            let mut w = u64::from(hash) % total;
            let mut pick = primaries[primaries.len() - 1];
            for &i in &primaries {
                let weight = u64::from(self.servers[i].weight);
                if w < weight {
                    pick = i;
                    break;
                }
                w -= weight;
            }
            if mask.get(pick) {
                return Some(pick);
            }
        }
        self.round_robin(mask, now)
    }

    /// nginx's `hash $remote_addr consistent`: walk the ring from the client's
    /// point to the first name with an eligible address (at most 20 points,
    /// as nginx), then fall back to round robin.
    pub(super) fn source_hash(&self, mask: &Mask, client: IpAddr, now: Instant) -> Option<usize> {
        if self.ring.points.is_empty() {
            return self.round_robin(mask, now);
        }
        let key = client.to_canonical().to_string();
        let hash = crc32fast::hash(key.as_bytes());
        let start = self.ring.points.partition_point(|&(h, _)| h < hash);
        let n = self.ring.points.len();
        for t in 0..20.min(n) {
            let (_, name) = self.ring.points[(start + t) % n];
            let mut same = Mask::new(self.servers.len());
            for &i in &self.ring.names[name as usize] {
                if mask.get(i) {
                    same.set(i);
                }
            }
            if !same.is_empty() {
                return self.round_robin(&same, now);
            }
        }
        self.round_robin(mask, now)
    }
}

/// nginx's consistent-hash ring: 160 points per unit of weight for each
/// server name, point hashes chained through CRC32 of `host \0 port`.
#[derive(Debug, Default)]
pub(super) struct Ring {
    /// (point hash, index into `names`), sorted, duplicates dropped.
    points: Vec<(u32, u32)>,
    /// Server indices behind each name (a name may resolve to several).
    names: Vec<Vec<usize>>,
}

impl Ring {
    pub(super) fn new(servers: &[Server]) -> Ring {
        let mut names: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if s.standby() {
                continue;
            }
            match names.iter_mut().find(|(n, _)| *n == s.name) {
                Some((_, v)) => v.push(i),
                None => names.push((s.name.clone(), vec![i])),
            }
        }
        let mut points = Vec::new();
        for (ni, (name, idx)) in names.iter().enumerate() {
            let (host, port) = name.rsplit_once(':').unwrap_or((name, ""));
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(&[0]);
            base.update(port.as_bytes());
            let weight = servers[idx[0]].weight;
            let mut prev: u32 = 0;
            for _ in 0..weight * 160 {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push((hash, ni as u32));
                prev = hash;
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Ring { points, names: names.into_iter().map(|(_, v)| v).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use crate::state::pool::tests::{pool, server};

    #[test]
    fn source_hash_is_sticky_and_moves_few_clients_when_a_server_leaves() {
        let names = ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443", "10.0.0.4:443"];
        let full = pool(Balance::SourceHash, names.iter().map(|n| server(n, 1, false)).collect());
        let three = pool(Balance::SourceHash, names[..3].iter().map(|n| server(n, 1, false)).collect());
        let now = Instant::now();
        let mut moved = 0;
        let mut on_removed = 0;
        for i in 0..2000u32 {
            let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let a = full.pick(now, ip, &[]).unwrap().idx;
            assert_eq!(full.pick(now, ip, &[]).unwrap().idx, a, "sticky");
            let b = three.pick(now, ip, &[]).unwrap().idx;
            if a == 3 {
                on_removed += 1;
            } else if a != b {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "clients of the servers that stay keep them");
        assert!((300..700).contains(&on_removed), "about a quarter on each server: {on_removed}");
    }
}
