//! Clients arriving and being served: the bound sockets (`bind`) and their accept
//! loops, which never die (`listener`), one client's life from the pick to
//! the end of its bytes (`proxy`), and the tokens that stop accepting and
//! end the grace period (`shutdown`). Reads the snapshot (`state/`) and
//! asks selection; never waits on the admin server or a reload.

pub mod bind;
pub mod listener;
pub mod proxied;
pub mod proxy;
pub mod shutdown;
