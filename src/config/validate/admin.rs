//! `[admin]`: where the admin server listens, its token, the control
//! socket, and a warning when status is readable beyond this host.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::listeners;

use super::*;

impl Validator<'_> {
    /// `[admin]`, which must not listen where a listener does.
    pub(super) fn admin(&mut self, raw: &RawConfig, binds: &listeners::Binds) -> AdminConfig {
        let mut admin = AdminConfig::default();
        if let Some(a) = &raw.admin {
            let a = a.get_ref();
            if let Some(l) = &a.listen {
                match parse_listen(l.get_ref(), "\"127.0.0.1:9900\"") {
                    Ok(addr) => admin.listen = addr,
                    Err(m) => self.err(Some(l.span()), "admin.listen", m),
                }
            }
            if let Some(t) = &a.token_file {
                admin.token_file = Some(PathBuf::from(t.get_ref()));
                admin.token_file_pos = self.lines.pos(t.span().start);
            }
            if let Some(s) = &a.status_needs_token {
                admin.status_needs_token = *s.get_ref();
                if admin.status_needs_token && admin.token_file.is_none() {
                    self.err(Some(s.span()), "admin.status_needs_token", "needs a token_file to take the token from");
                }
            }
            if let Some(c) = &a.control_socket {
                match ControlSocket::parse(c.get_ref()) {
                    Ok(v) => admin.control_socket = v,
                    Err(m) => self.err(Some(c.span()), "admin.control_socket", m),
                }
            }
        }
        self.admin_overlap(raw, binds, admin.listen);
        admin
    }

    /// The admin port beside the listeners: it is bound after them, so a
    /// listener holding its address (or a wildcard over it) fails the
    /// start. Said at `admin.listen`, or at the listener when the admin
    /// address is the default.
    fn admin_overlap(&mut self, raw: &RawConfig, binds: &listeners::Binds, at: SocketAddr) {
        let Some((i, bind, span)) = binds.iter().find(|(_, b, _)| listeners::overlaps(*b, at, true)) else { return };
        let set = raw.admin.as_ref().and_then(|a| a.get_ref().listen.as_ref()).map(|l| l.span());
        let line = self.lines.pos(span.start).line;
        let what = if *bind == at {
            format!(
                "{at} is also the bind of the listener at line {line} (listener[{i}]): the admin port never carries traffic"
            )
        } else {
            let dual = if at.is_ipv6() && bind.is_ipv4() {
                " (the admin socket is not IPv6-only: its [::] takes IPv4 too)"
            } else {
                ""
            };
            format!(
                "{at} overlaps {bind} of the listener at line {line} (listener[{i}]){dual}: the start would fail to bind the admin port (address in use)"
            )
        };
        let (span, fix) = match set {
            Some(s) => (s, "give [admin] listen another port"),
            None => (span.clone(), "the admin server listens there by default: set [admin] listen to another port"),
        };
        self.err(Some(span), "admin.listen", format!("{what}; {fix}"));
    }

    /// GET endpoints answer anyone unless status_needs_token: say so
    /// whenever they can be reached from beyond this host.
    pub(super) fn admin_exposed(&mut self, raw: &RawConfig, admin: &AdminConfig) {
        if admin.listen.ip().is_loopback() || admin.status_needs_token {
            return;
        }
        let span = raw.admin.as_ref().and_then(|a| a.get_ref().listen.as_ref()).map(|l| l.span());
        let message = if admin.token_file.is_none() {
            format!(
                "{} is beyond loopback without a token_file: status and metrics are readable by anyone who reaches this port (POST endpoints stay off)",
                admin.listen
            )
        } else {
            format!(
                "{} is beyond loopback: /status, the page and /metrics are readable by anyone who reaches this port (the token guards POST only); set status_needs_token = true to require it for them too",
                admin.listen
            )
        };
        self.warn(span, "admin.listen", message);
    }
}
