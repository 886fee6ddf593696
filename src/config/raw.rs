//! The serde mirror of lb.toml: what the file says, nothing more.
//!
//! No defaults are applied here (every key is an `Option`), so validation in
//! `config/mod.rs` can tell "unset" from "set to the default". Values that a
//! later check may reject are `Spanned`, so that check can still point at the
//! line and column. Every table denies unknown keys: a typo is an error, never
//! a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub workers: Option<S<i64>>,
    pub admin: Option<S<RawAdmin>>,
    pub defaults: Option<RawSettings>,
    #[serde(default)]
    pub listener: Vec<S<RawListener>>,
    #[serde(default)]
    pub pool: BTreeMap<String, S<RawPool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Option<S<String>>,
    pub pool: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
}

/// Declares a table that carries every `[defaults]` key plus its own fields.
/// A macro and not `#[serde(flatten)]`: flatten does not work together with
/// `deny_unknown_fields`, and unknown keys would slip through.
macro_rules! with_settings {
    ($(#[$meta:meta])* pub struct $name:ident { $(pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(pub $field: $ty,)*
            pub balance: Option<S<String>>,
            pub connect_timeout: Option<S<String>>,
            pub idle_timeout: Option<S<String>>,
            pub max_fails: Option<S<i64>>,
            pub fail_timeout: Option<S<String>>,
            pub retries: Option<S<toml::Value>>,
            pub all_down: Option<S<String>>,
            pub resolve_interval: Option<S<String>>,
            pub shutdown_timeout: Option<S<String>>,
        }

        impl $name {
            pub fn settings(&self) -> SettingsRef<'_> {
                SettingsRef {
                    balance: self.balance.as_ref(),
                    connect_timeout: self.connect_timeout.as_ref(),
                    idle_timeout: self.idle_timeout.as_ref(),
                    max_fails: self.max_fails.as_ref(),
                    fail_timeout: self.fail_timeout.as_ref(),
                    retries: self.retries.as_ref(),
                    all_down: self.all_down.as_ref(),
                    resolve_interval: self.resolve_interval.as_ref(),
                    shutdown_timeout: self.shutdown_timeout.as_ref(),
                }
            }
        }
    };
}

with_settings! {
    /// `[defaults]`: every pool inherits these.
    pub struct RawSettings {}
}

with_settings! {
    /// `[pool.NAME]`: its servers, and any `[defaults]` key for this pool only.
    pub struct RawPool {
        pub servers: Option<S<Vec<S<RawServer>>>>,
        pub health: Option<S<RawHealth>>,
    }
}

/// `[pool.NAME.health]`: the active check of every server of the pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
    pub expect_status: Option<S<Vec<S<toml::Value>>>>,
    pub expect_body: Option<S<String>>,
    pub expect_json: Option<S<toml::Table>>,
    pub sni: Option<S<String>>,
    pub host: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub port: Option<S<i64>>,
}

/// The `[defaults]` keys of one table, borrowed, so defaults and pools are
/// validated by the same code.
#[derive(Debug, Default, Clone, Copy)]
pub struct SettingsRef<'a> {
    pub balance: Option<&'a S<String>>,
    pub connect_timeout: Option<&'a S<String>>,
    pub idle_timeout: Option<&'a S<String>>,
    pub max_fails: Option<&'a S<i64>>,
    pub fail_timeout: Option<&'a S<String>>,
    pub retries: Option<&'a S<toml::Value>>,
    pub all_down: Option<&'a S<String>>,
    pub resolve_interval: Option<&'a S<String>>,
    pub shutdown_timeout: Option<&'a S<String>>,
}

/// A server entry: `"host:port"` or `{ address = "host:port", weight = 1, ... }`.
#[derive(Debug, Default)]
pub struct RawServer {
    pub address: Option<S<String>>,
    pub weight: Option<S<i64>>,
    pub backup: Option<S<bool>>,
    pub max_conns: Option<S<i64>>,
    pub state: Option<S<String>>,
}

const SERVER_FIELDS: &[&str] = &["address", "weight", "backup", "max_conns", "state"];

// Hand-written rather than `#[serde(untagged)]`: untagged can only say "data did
// not match any variant", which tells an operator nothing.
impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawServer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a server "host:port" or a table { address = "host:port", ... }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawServer, E> {
                // The span of a bare string is the span of the whole entry,
                // which the caller has through `Spanned<RawServer>`.
                Ok(RawServer { address: Some(Spanned::new(0..0, v.to_owned())), ..RawServer::default() })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServer, A::Error> {
                let mut s = RawServer::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => set(&mut s.address, "address", map.next_value()?)?,
                        "weight" => set(&mut s.weight, "weight", map.next_value()?)?,
                        "backup" => set(&mut s.backup, "backup", map.next_value()?)?,
                        "max_conns" => set(&mut s.max_conns, "max_conns", map.next_value()?)?,
                        "state" => set(&mut s.state, "state", map.next_value()?)?,
                        other => return Err(de::Error::unknown_field(other, SERVER_FIELDS)),
                    }
                }
                Ok(s)
            }
        }
        fn set<T, E: de::Error>(slot: &mut Option<T>, key: &'static str, v: T) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(de::Error::duplicate_field(key));
            }
            Ok(())
        }
        d.deserialize_any(V)
    }
}
