//! `GET /metrics`: the status view as Prometheus series.
//!
//! Every value comes from [`View`]; nothing is computed here that `/status`
//! and the page do not show too. Series are set in the view's order (pools
//! and servers as configured, listeners as opened) and the exporter sorts
//! them by name and labels, so two scrapes list them the same way.

use std::sync::Mutex;

use crate::metrics::*;
use crate::status::View;

/// One rendering at a time keeps the absolute values of one scrape coherent.
static RENDER: Mutex<()> = Mutex::new(());

/// The Prometheus text exposition of `view`.
pub fn render(m: &Metrics, view: &View) -> String {
    let _one = RENDER.lock().unwrap_or_else(|p| p.into_inner());
    m.gauge(BUILD_INFO, vec![l("version", view.version)]).set(1.0);
    for pool in &view.pools {
        let pname = pool.name.clone();
        m.gauge(POOL_FAIL_OPEN, vec![l("pool", pname.clone())]).set(f64::from(u8::from(pool.all_down)));
        for s in &pool.servers {
            let labels = || vec![l("pool", pname.clone()), l("server", s.label.clone())];
            m.gauge(SERVER_UP, labels()).set(f64::from(u8::from(s.eligible)));
            m.gauge(SERVER_ACTIVE, labels()).set(f64::from(s.active));
            m.counter(SERVER_CONNECTIONS, labels()).absolute(s.connections);
            m.counter(SERVER_RECEIVED, labels()).absolute(s.bytes_received);
            m.counter(SERVER_SENT, labels()).absolute(s.bytes_sent);
            for (reason, n) in &s.connect_failures_by_reason {
                let mut lb = labels();
                lb.push(l("reason", *reason));
                m.counter(SERVER_CONNECT_FAILURES, lb).absolute(*n);
            }
            let mut passive = labels();
            passive.push(l("cause", "passive"));
            m.counter(SERVER_EJECTIONS, passive).absolute(s.passive_ejections);
            if let Some(c) = &s.check {
                m.gauge(SERVER_CHECK_UP, labels()).set(f64::from(u8::from(c.state == "up")));
                let mut active = labels();
                active.push(l("cause", "active"));
                m.counter(SERVER_EJECTIONS, active).absolute(c.downs);
                if let Some(t) = c.cert_not_after {
                    m.gauge(CERT_EXPIRY, labels()).set(t as f64);
                }
            }
        }
    }
    for ls in &view.listeners {
        let name = || vec![l("listener", ls.local.to_string())];
        m.counter(LISTENER_ACCEPTED, name()).absolute(ls.accepted);
        m.gauge(LISTENER_ACTIVE, name()).set(ls.active as f64);
        for (reason, v) in [
            ("max_connections", ls.rejected_max_connections),
            ("fd_limit", ls.rejected_fd_limit),
            ("no_pool", ls.rejected_no_pool),
        ] {
            let mut lb = name();
            lb.push(l("reason", reason));
            m.counter(LISTENER_REJECTED, lb).absolute(v);
        }
    }
    m.counter(RELOADS, vec![l("result", "success")]).absolute(view.reload.successes);
    m.counter(RELOADS, vec![l("result", "failure")]).absolute(view.reload.failures);
    m.gauge(RELOAD_OK, vec![]).set(if view.reload.last_ok == Some(false) { 0.0 } else { 1.0 });
    m.render()
}
