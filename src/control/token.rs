//! The admin token: read from `[admin] token_file` with the config (and
//! rejected with it), held where a reload can replace it, and compared in
//! time that does not depend on where a guess differs.
//!
//! A leaf below both the lifecycle (which reads and swaps it) and the
//! admin server (which asks it).

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::config::{AdminConfig, ConfigError};

/// Reads the token file: its first line, trimmed. An empty, unreadable or
/// untrusted file (see `files.rs`: readable or writable by others, too
/// large, not a regular file) is a config error, not a silently open
/// endpoint.
pub fn read(cfg: &AdminConfig, source: &str) -> Result<Option<String>, ConfigError> {
    let Some(path) = &cfg.token_file else { return Ok(None) };
    let err = |message: String| ConfigError {
        source: source.to_owned(),
        pos: Some(cfg.token_file_pos),
        key: "admin.token_file".into(),
        message,
    };
    let text = crate::files::read(path, &path.display().to_string(), crate::files::TOKEN).map_err(err)?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(err(format!("{} holds no token", path.display())));
    }
    Ok(Some(token))
}

/// The token in force; `None`: the POST endpoints are off.
#[derive(Default)]
pub struct Token(ArcSwapOption<String>);

impl Token {
    pub fn new(token: Option<String>) -> Token {
        Token(ArcSwapOption::new(token.map(Arc::new)))
    }

    pub fn get(&self) -> Option<Arc<String>> {
        self.0.load_full()
    }

    /// Puts `token` in force; `true` when it differs from the one before.
    pub fn replace(&self, token: Option<String>) -> bool {
        let new = token.map(Arc::new);
        self.0.swap(new.clone()) != new
    }

    /// Whether `given` is the token in force.
    pub fn accepts(&self, given: &str) -> bool {
        self.get().is_some_and(|t| constant_time_eq(given.as_bytes(), t.as_bytes()))
    }
}

/// Equal in time that depends neither on where they differ nor on their
/// lengths: the SHA-256 digests are compared, all 32 bytes of them.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (ring::digest::digest(&ring::digest::SHA256, a), ring::digest::digest(&ring::digest::SHA256, b));
    da.as_ref().iter().zip(db.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Below this many bytes a token is easy to guess: start and reload warn.
pub const SHORT: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        let t = Token::new(Some("secret".into()));
        assert!(t.accepts("secret") && !t.accepts("secret2"));
        assert!(t.replace(None) && !Token::default().accepts(""));
    }
}
