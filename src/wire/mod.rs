//! What happens on a client's two sockets, knowing no pool or snapshot:
//! the byte path (`copy`, with `splice` for bulk bursts), the connections
//! one balancer holds, their stop request and counters (`conns`), a
//! server's close orders (`closing`), who may connect and how much one
//! client may hold (`admission`), a ClientHello read as far as its server
//! name (`sni`), an outer balancer's PROXY protocol header
//! (`proxy_header`), our sockets' options and the upstream connect (`net`),
//! and the access log (`access_log`). `traffic/` puts these together for
//! one client; `state/` keeps what lasts longer.

pub mod access_log;
pub mod admission;
pub mod closing;
pub mod conns;
pub mod copy;
pub mod net;
pub mod proxy_header;
pub mod sni;
pub mod splice;
