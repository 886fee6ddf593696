//! `[pool.NAME.health]`: the active check of a pool's servers.

use std::path::PathBuf;

use super::*;

impl Validator<'_> {
    /// A pool's check; `None`: `kind = "none"`.
    /// `bundle`: `[cluster] bundle`, which `client_bundle` presents.
    pub(super) fn health(
        &mut self,
        h: &S<raw::RawHealth>,
        key: &str,
        bundle: Option<&S<String>>,
    ) -> Option<HealthConfig> {
        let r = h.get_ref();
        let k = |name: &str| format!("{key}.{name}");
        let mut c = HealthConfig::default();
        if let Some(kind) = &r.kind {
            c.kind = match kind.get_ref().as_str() {
                "https" => CheckKind::Https,
                "http" => CheckKind::Http,
                "tcp" => CheckKind::Tcp,
                "none" => return None,
                other => {
                    self.err(
                        Some(kind.span()),
                        k("kind"),
                        format!("expected \"https\", \"http\", \"tcp\" or \"none\", found \"{other}\""),
                    );
                    CheckKind::Https
                }
            };
        }
        if let Some(p) = &r.path {
            let path = p.get_ref();
            if !path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                self.err(
                    Some(p.span()),
                    k("path"),
                    format!("expected a path starting with '/' and without spaces, found \"{path}\""),
                );
            } else {
                c.path = path.clone();
            }
        }
        if let Some(Some(d)) = self.duration(r.interval.as_ref(), k("interval"), false) {
            c.interval = d;
        }
        if let Some(Some(d)) = self.duration(r.timeout.as_ref(), k("timeout"), false) {
            c.timeout = d;
        }
        if c.interval < c.timeout {
            let span = r.interval.as_ref().or(r.timeout.as_ref()).map(|s| s.span()).unwrap_or(h.span());
            self.warn(
                Some(span),
                k("interval"),
                format!(
                    "interval {} is shorter than timeout {}: a slow probe runs into the next one, and probes then run back to back",
                    format_duration(c.interval),
                    format_duration(c.timeout)
                ),
            );
        }
        if let Some(v) = &r.rise
            && let Some(n) = self.int(v, &k("rise"), 1, 1000, "")
        {
            c.rise = n;
        }
        if let Some(v) = &r.fall
            && let Some(n) = self.int(v, &k("fall"), 1, 1000, "")
        {
            c.fall = n;
        }
        self.expectations(r, &k, &mut c);
        self.probe_target(r, &k, &mut c);
        if c.kind == CheckKind::Tcp && (c.expect_body.is_some() || !c.expect_json.is_empty()) {
            self.err(Some(h.span()), key.to_owned(), "expect_body and expect_json need kind = \"http\" or \"https\"");
        }
        if c.kind != CheckKind::Https && (c.ca_file.is_some() || c.sni.is_some()) {
            self.err(Some(h.span()), key.to_owned(), "ca_file and sni need kind = \"https\"");
        }
        c.client_cert = self.client_cert(r, &k, bundle);
        if c.kind != CheckKind::Https && c.client_cert.is_some() {
            self.err(Some(h.span()), key.to_owned(), "a client certificate needs kind = \"https\"");
        }
        Some(c)
    }

    /// What a probe's answer must hold: `expect_status`, `expect_body`,
    /// `expect_json`.
    fn expectations(&mut self, r: &raw::RawHealth, k: &impl Fn(&str) -> String, c: &mut HealthConfig) {
        if let Some(list) = &r.expect_status {
            let mut out = Vec::new();
            for v in list.get_ref() {
                match parse_status(v.get_ref()) {
                    Some(m) => out.push(m),
                    None => self.err(
                        Some(v.span()),
                        k("expect_status"),
                        format!("expected a status from 100 to 599 or a class like \"2xx\", found {}", v.get_ref()),
                    ),
                }
            }
            if list.get_ref().is_empty() {
                self.err(Some(list.span()), k("expect_status"), "expected at least one status");
            }
            c.expect_status = out;
        }
        if let Some(b) = &r.expect_body {
            if b.get_ref().is_empty() {
                self.err(Some(b.span()), k("expect_body"), "expected a non-empty string");
            }
            c.expect_body = Some(b.get_ref().clone());
        }
        if let Some(t) = &r.expect_json {
            for (field, value) in t.get_ref() {
                match toml_to_json(value) {
                    Some(j) => c.expect_json.push((field.clone(), j)),
                    None => self.err(
                        Some(t.span()),
                        k(&format!("expect_json.{field}")),
                        "expected a string, number or boolean",
                    ),
                }
            }
        }
    }

    /// Whom a probe asks, and how: `sni`, `host`, `ca_file`, `port`.
    fn probe_target(&mut self, r: &raw::RawHealth, k: &impl Fn(&str) -> String, c: &mut HealthConfig) {
        for (slot, v, name) in [(&mut c.sni, &r.sni, "sni"), (&mut c.host, &r.host, "host")] {
            if let Some(v) = v {
                let s = v.get_ref();
                if s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    self.err(Some(v.span()), k(name), format!("expected a host name, found \"{s}\""));
                } else {
                    *slot = Some(s.clone());
                }
            }
        }
        if let Some(f) = &r.ca_file {
            c.ca_file = Some(PathBuf::from(f.get_ref()));
            c.ca_file_pos = self.lines.pos(f.span().start);
        }
        if let Some(p) = &r.port {
            c.port = self.int(p, &k("port"), 1, 65535, "").map(|n| n as u16);
        }
    }
}

impl Validator<'_> {
    /// Whom a probe speaks as: `client_cert` and `client_key`, or
    /// `client_bundle = true` (`[cluster] bundle`'s cert.pem and key.pem).
    /// The files are read with the rest of what the config names
    /// (`health::tls_configs`), not here.
    fn client_cert(
        &mut self,
        r: &raw::RawHealth,
        k: &impl Fn(&str) -> String,
        bundle: Option<&S<String>>,
    ) -> Option<ClientCert> {
        let path = |v: &S<String>| PathBuf::from(v.get_ref());
        for (v, name) in [(&r.client_cert, "client_cert"), (&r.client_key, "client_key")] {
            if let Some(v) = v
                && v.get_ref().is_empty()
            {
                self.err(Some(v.span()), k(name), "expected a file name");
                return None;
            }
        }
        let from_bundle = r.client_bundle.as_ref().filter(|b| *b.get_ref());
        match (from_bundle, &r.client_cert, &r.client_key) {
            (None, None, None) => None,
            (Some(b), None, None) => {
                let Some(dir) = bundle else {
                    self.err(
                        Some(b.span()),
                        k("client_bundle"),
                        "needs [cluster] bundle = \"DIR\", the UCP client bundle whose cert.pem and key.pem it presents",
                    );
                    return None;
                };
                let pos = self.lines.pos(b.span().start);
                let dir = path(dir);
                Some(ClientCert {
                    cert: dir.join("cert.pem"),
                    key: dir.join("key.pem"),
                    from_bundle: true,
                    pos,
                    key_pos: pos,
                })
            }
            (Some(b), _, _) => {
                self.err(
                    Some(b.span()),
                    k("client_bundle"),
                    "client_bundle presents the bundle's cert.pem and key.pem: leave out client_cert and client_key, or client_bundle",
                );
                None
            }
            (None, Some(cert), Some(key)) => Some(ClientCert {
                cert: path(cert),
                key: path(key),
                from_bundle: false,
                pos: self.lines.pos(cert.span().start),
                key_pos: self.lines.pos(key.span().start),
            }),
            (None, Some(cert), None) => {
                self.err(Some(cert.span()), k("client_cert"), "needs client_key, the certificate's private key (PEM)");
                None
            }
            (None, None, Some(key)) => {
                self.err(Some(key.span()), k("client_key"), "needs client_cert, the certificate (PEM) of this key");
                None
            }
        }
    }
}

fn parse_status(v: &toml::Value) -> Option<StatusMatch> {
    match v {
        toml::Value::Integer(n) if (100..=599).contains(n) => Some(StatusMatch::Code(*n as u16)),
        toml::Value::String(s) => {
            let b = s.as_bytes();
            (b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && s[1..].eq_ignore_ascii_case("xx"))
                .then(|| StatusMatch::Class(u16::from(b[0] - b'0')))
        }
        _ => None,
    }
}

fn toml_to_json(v: &toml::Value) -> Option<serde_json::Value> {
    match v {
        toml::Value::String(s) => Some(serde_json::Value::String(s.clone())),
        toml::Value::Integer(n) => Some(serde_json::Value::from(*n)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number),
        toml::Value::Boolean(b) => Some(serde_json::Value::Bool(*b)),
        _ => None,
    }
}
