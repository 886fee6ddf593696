//! `[admin]`: where the admin server listens, its token, the control
//! socket, and a warning when status is readable beyond this host.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::*;

impl Validator<'_> {
    /// `[admin]`, which must not listen where a listener does.
    pub(super) fn admin(&mut self, raw: &RawConfig, listeners: &[ListenerConfig]) -> AdminConfig {
        let mut admin = AdminConfig::default();
        if let Some(a) = &raw.admin {
            let a = a.get_ref();
            if let Some(l) = &a.listen {
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => admin.listen = addr,
                    Err(_) => self.err(
                        Some(l.span()),
                        "admin.listen",
                        format!("expected an IP address and port like \"127.0.0.1:9900\", found \"{}\"", l.get_ref()),
                    ),
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
        if listeners.iter().any(|l| l.bind == admin.listen && admin.listen.port() != 0) {
            self.err(
                None,
                "admin.listen",
                format!("{} is also a traffic listener: the admin port never carries traffic", admin.listen),
            );
        }
        admin
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
