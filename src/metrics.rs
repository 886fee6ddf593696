//! Every metric name, its help text, and the Prometheus recorder.
//!
//! The hot path pays nothing for metrics: connections count into the
//! atomics of `ServerState`, `Check` and `ListenerState`, which exist anyway
//! for /status. A scrape copies the status view into this recorder
//! (absolute counters, gauges; `admin/prom.rs`) and renders it; the only
//! thing recorded as it happens is each probe's duration, into the
//! histogram of every (pool, server) that uses the check. Each running load
//! balancer has its own recorder, so several can share a process (tests)
//! without mixing.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub const SERVER_UP: &str = "ucp_lb_server_up";
pub const SERVER_CHECK_UP: &str = "ucp_lb_server_check_up";
pub const SERVER_ACTIVE: &str = "ucp_lb_server_active_connections";
pub const SERVER_CONNECTIONS: &str = "ucp_lb_server_connections_total";
pub const SERVER_CONNECT_FAILURES: &str = "ucp_lb_server_connect_failures_total";
pub const SERVER_RECEIVED: &str = "ucp_lb_server_received_bytes_total";
pub const SERVER_SENT: &str = "ucp_lb_server_sent_bytes_total";
pub const SERVER_EJECTIONS: &str = "ucp_lb_server_ejections_total";
pub const SERVER_WEIGHT_RATIO: &str = "ucp_lb_server_weight_ratio";
pub const SERVER_CLOSED: &str = "ucp_lb_server_closed_sessions_total";
pub const CHECK_DURATION: &str = "ucp_lb_health_check_duration_seconds";
pub const CERT_EXPIRY: &str = "ucp_lb_server_cert_expiry_timestamp_seconds";
pub const LISTENER_ACCEPTED: &str = "ucp_lb_listener_accepted_connections_total";
pub const LISTENER_ACTIVE: &str = "ucp_lb_listener_active_connections";
pub const LISTENER_REJECTED: &str = "ucp_lb_listener_rejected_connections_total";
pub const LISTENER_CLIENTS: &str = "ucp_lb_listener_tracked_clients";
pub const ROUTE_CONNECTIONS: &str = "ucp_lb_route_connections_total";
pub const ROUTE_REFUSED: &str = "ucp_lb_route_refused_connections_total";
pub const LISTENER_NOT_TLS: &str = "ucp_lb_listener_not_tls_clients_total";
pub const PROXY_PROTOCOL_HEADERS: &str = "ucp_lb_proxy_protocol_headers_total";
pub const PROXY_PROTOCOL_REFUSED: &str = "ucp_lb_proxy_protocol_refused_total";
pub const PROXY_PROTOCOL_UNTRUSTED: &str = "ucp_lb_proxy_protocol_untrusted_total";
pub const RELOADS: &str = "ucp_lb_config_reloads_total";
pub const RELOAD_OK: &str = "ucp_lb_config_last_reload_successful";
pub const BUILD_INFO: &str = "ucp_lb_build_info";
pub const POOL_FAIL_OPEN: &str = "ucp_lb_pool_fail_open";
pub const ACCESS_LOG_LINES: &str = "ucp_lb_access_log_lines_total";
pub const ACCESS_LOG_WRITABLE: &str = "ucp_lb_access_log_writable";
pub const START_TIME: &str = "ucp_lb_start_time_seconds";
pub const MOVED_IN: &str = "ucp_lb_upgrade_connections_moved_in_total";
pub const PREVIOUS_HOLDS: &str = "ucp_lb_upgrade_previous_process_connections";
pub const UPGRADES_RESUMED: &str = "ucp_lb_upgrade_resumed_total";
pub const CLUSTER_REFRESH_FAILURES: &str = "ucp_lb_cluster_refresh_failures_total";
pub const CLUSTER_LIST_AGE: &str = "ucp_lb_cluster_list_age_seconds";
pub const POOL_CLUSTER_NODES: &str = "ucp_lb_pool_cluster_nodes";

const HELP: &[(&str, &str, Unit)] = &[
    (
        CLUSTER_REFRESH_FAILURES,
        "Reads of the swarm's node list that failed, by reason (the last good list stayed in force)",
        Unit::Count,
    ),
    (
        CLUSTER_LIST_AGE,
        "Seconds since the node list in force was read from the swarm (since the start while none has been)",
        Unit::Seconds,
    ),
    (POOL_CLUSTER_NODES, "Servers the pool takes from the swarm's node list", Unit::Count),
    (SERVER_UP, "1 when the server is eligible for new clients, 0 when not", Unit::Count),
    (SERVER_CHECK_UP, "1 when the server's last active check state is up, 0 when down or unknown", Unit::Count),
    (SERVER_ACTIVE, "Connections open (or opening) to the server", Unit::Count),
    (SERVER_CONNECTIONS, "Connections made to the server", Unit::Count),
    (SERVER_CONNECT_FAILURES, "Failed connects to the server, by reason", Unit::Count),
    (SERVER_RECEIVED, "Bytes received from the server and passed to clients", Unit::Bytes),
    (SERVER_SENT, "Bytes from clients sent to the server", Unit::Bytes),
    (
        SERVER_EJECTIONS,
        "Times the server was taken out, by cause (passive: failed connects; active: checks)",
        Unit::Count,
    ),
    (
        SERVER_WEIGHT_RATIO,
        "Share of its weight the server has now: below 1 while it warms up after coming back (slow_start)",
        Unit::Count,
    ),
    (SERVER_CLOSED, "Open sessions ucp-lb closed, by reason (server_down: on_server_down = close)", Unit::Count),
    (CHECK_DURATION, "Duration of active checks, failed ones included", Unit::Seconds),
    (CERT_EXPIRY, "notAfter of the server certificate seen by the last HTTPS check, Unix seconds", Unit::Seconds),
    (LISTENER_ACCEPTED, "Clients accepted by the listener", Unit::Count),
    (LISTENER_ACTIVE, "Clients open on the listener", Unit::Count),
    (LISTENER_REJECTED, "Clients closed at once, by reason", Unit::Count),
    (
        LISTENER_CLIENTS,
        "Client addresses the listener's per-client limits keep count of (open connections or a refilling rate)",
        Unit::Count,
    ),
    (
        ROUTE_CONNECTIONS,
        "Clients a routed listener sent on, by route (server name pattern; \"\" for the pool for the rest)",
        Unit::Count,
    ),
    (
        ROUTE_REFUSED,
        "Clients a route sent on that its pool could not take (no server eligible, or every connect failed)",
        Unit::Count,
    ),
    (LISTENER_NOT_TLS, "Clients of a routed listener whose first bytes were not a TLS handshake", Unit::Count),
    (
        PROXY_PROTOCOL_HEADERS,
        "PROXY protocol headers read, by version (v1, v2) and command (proxy, local, unknown)",
        Unit::Count,
    ),
    (
        PROXY_PROTOCOL_REFUSED,
        "Clients of a PROXY protocol listener closed without a valid header, by reason (missing, broken, too_large, timeout, closed)",
        Unit::Count,
    ),
    (
        PROXY_PROTOCOL_UNTRUSTED,
        "PROXY protocol headers from a source not in real_ip_from: read, their address not believed",
        Unit::Count,
    ),
    (RELOADS, "Config reloads, by result", Unit::Count),
    (RELOAD_OK, "1 when the last config reload succeeded (or none was tried), 0 when it failed", Unit::Count),
    (
        BUILD_INFO,
        "Always 1; the labels say which ucp-lb runs (version, commit, build date, compiler, target)",
        Unit::Count,
    ),
    (POOL_FAIL_OPEN, "1 while no server of the pool is eligible and it fails open (or rejects)", Unit::Count),
    (
        ACCESS_LOG_LINES,
        "Access log lines, by log and result: written, or dropped with a reason: queue_full (its writer behind or blocked), \
         or the file could not be opened or written (missing_directory, not_regular_file, permission_denied, read_only, \
         no_space, io_error)",
        Unit::Count,
    ),
    (
        ACCESS_LOG_WRITABLE,
        "1 when the access log named by the running config is being written, 0 when it cannot be opened or written or \
         its writer has been blocked in one write for over a second",
        Unit::Count,
    ),
    (START_TIME, "When this process started, Unix seconds (an upgrade in place starts a new one)", Unit::Seconds),
    (
        MOVED_IN,
        "Open connections moved into this process from the one it took over from (ucp-lb --upgrade)",
        Unit::Count,
    ),
    (
        PREVIOUS_HOLDS,
        "Connections the process this one took over from still holds while it drains (0 when none drains)",
        Unit::Count,
    ),
    (
        UPGRADES_RESUMED,
        "Upgrades that broke off after the new process said go (it died or stalled): this process took its listeners and connections back",
        Unit::Count,
    ),
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// One rendering at a time keeps the absolute values of one scrape
    /// coherent.
    pub render_one: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

pub fn l(k: &'static str, v: impl Into<String>) -> Label {
    Label::new(k, v.into())
}

impl Metrics {
    pub fn new() -> Metrics {
        // Probe durations: from a loopback millisecond to a 10 s timeout.
        let buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets_for_metric(Matcher::Full(CHECK_DURATION.into()), &buckets) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        for (name, help, unit) in HELP {
            let k = metrics::KeyName::from(*name);
            let h = metrics::SharedString::from(*help);
            match *name {
                SERVER_UP | SERVER_CHECK_UP | SERVER_ACTIVE | SERVER_WEIGHT_RATIO | CERT_EXPIRY | LISTENER_ACTIVE
                | LISTENER_CLIENTS | RELOAD_OK | BUILD_INFO | POOL_FAIL_OPEN | CLUSTER_LIST_AGE
                | POOL_CLUSTER_NODES => recorder.describe_gauge(k, Some(*unit), h),
                CHECK_DURATION => recorder.describe_histogram(k, Some(*unit), h),
                _ => recorder.describe_counter(k, Some(*unit), h),
            }
        }
        let handle = recorder.handle();
        Metrics { recorder, handle, render_one: std::sync::Mutex::new(()) }
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder.register_counter(&key(name, labels), &meta())
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &meta())
    }

    /// The duration histogram of one (pool, server).
    pub fn check_duration(&self, pool: &str, server: &str) -> Histogram {
        self.recorder.register_histogram(&key(CHECK_DURATION, vec![l("pool", pool), l("server", server)]), &meta())
    }

    /// Folds the probe durations recorded since the last scrape into their
    /// buckets. The exporter keeps each sample until a scrape or this (and
    /// `build_recorder` starts no task for it): on a node nobody scrapes,
    /// memory grew with every probe (seen in the soak: 8 KiB a minute with
    /// 4 servers checked every second).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Renders every series set so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// How often [`upkeep_loop`] drains the probe-duration samples.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs [`Metrics::upkeep`] every 5 s, for ever; cancel by dropping.
pub async fn upkeep_loop(metrics: Arc<Metrics>) {
    let mut tick = crate::timer::interval(UPKEEP_EVERY);
    loop {
        tick.tick().await;
        metrics.upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upkeep_keeps_every_probe_duration() {
        let m = Metrics::new();
        let h = m.check_duration("p", "s");
        for _ in 0..10 {
            h.record(0.002);
        }
        m.upkeep();
        for _ in 0..5 {
            h.record(0.2);
        }
        m.upkeep();
        let text = m.handle.render();
        let count = format!("{CHECK_DURATION}_count{{pool=\"p\",server=\"s\"}} 15");
        assert!(text.contains(&count), "{text}");
        let sum = format!("{CHECK_DURATION}_sum{{pool=\"p\",server=\"s\"}} 1.02");
        assert!(text.contains(&sum), "{text}");
    }
}
