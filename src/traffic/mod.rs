//! Clients arriving and being served: the bound sockets and their accept
//! loops, which never die (`listener`), one client's life from the pick to
//! the end of its bytes (`proxy`), and the tokens that stop accepting and
//! end the grace period (`shutdown`). Reads the snapshot (`state/`) and
//! asks selection; never waits on the admin server or a reload.

pub mod listener;
pub mod proxy;
pub mod shutdown;
