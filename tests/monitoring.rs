//! config/'s Prometheus, alert and Grafana files: valid for promtool, and
//! naming only metrics ucp-lb exports.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn promtool() -> Option<PathBuf> {
    common::external_tool(&["/usr/bin/promtool", "/usr/local/bin/promtool"], "promtool")
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let Some(bin) = promtool() else { return };
    for args in [["check", "rules", "ucp-lb-alerts.yml"], ["check", "config", "prometheus.yml"]] {
        let out = Command::new(&bin).args(args).current_dir(config_dir()).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `ucp_lb_*` word in `text`, histogram suffixes taken off.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("ucp_lb_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
        out.push(name.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn alerts_and_dashboard_name_only_exported_metrics() {
    use ucp_lb::metrics::*;
    let exported = [
        SERVER_UP,
        SERVER_CHECK_UP,
        SERVER_ACTIVE,
        SERVER_CONNECTIONS,
        SERVER_CONNECT_FAILURES,
        SERVER_RECEIVED,
        SERVER_SENT,
        SERVER_EJECTIONS,
        CHECK_DURATION,
        CERT_EXPIRY,
        LISTENER_ACCEPTED,
        LISTENER_ACTIVE,
        LISTENER_REJECTED,
        RELOADS,
        RELOAD_OK,
        BUILD_INFO,
        POOL_FAIL_OPEN,
        ACCESS_LOG_WRITABLE,
        CLUSTER_LIST_AGE,
        CLUSTER_REFRESH_FAILURES,
    ];
    let dashboard = std::fs::read_to_string(config_dir().join("grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let alerts = std::fs::read_to_string(config_dir().join("ucp-lb-alerts.yml")).unwrap();
    for (file, text) in [("grafana-dashboard.json", &dashboard), ("ucp-lb-alerts.yml", &alerts)] {
        let names = metric_names(text);
        assert!(!names.is_empty(), "{file} uses ucp-lb metrics");
        for n in names {
            assert!(exported.contains(&n.as_str()), "{file} names {n}, which ucp-lb does not export");
        }
    }
    for alert in [
        "ucp_lb_server_up == 0",
        "ucp_lb_pool_fail_open",
        "ucp_lb_server_cert_expiry_timestamp_seconds - time() < 14 * 86400",
        "ucp_lb_config_last_reload_successful == 0",
        "ucp_lb_access_log_writable == 0",
        "ucp_lb_cluster_list_age_seconds > 300",
    ] {
        assert!(alerts.contains(alert), "an alert on {alert}");
    }
}
