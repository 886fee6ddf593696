//! `GET /metrics`: the status view as Prometheus series.
//!
//! Every value comes from [`View`]; nothing is computed here that `/status`
//! and the page do not show too. The exporter writes families and series
//! in hash-map order, which changes from one scrape to the next: the text
//! is put in a stable order here (families by name, counter and gauge
//! series by their labels; histogram buckets keep their own order).

use crate::metrics::*;
use crate::view::View;

/// The Prometheus text exposition of `view`.
pub fn render(m: &Metrics, view: &View) -> String {
    let _one = m.render_one.lock().unwrap_or_else(|p| p.into_inner());
    let b = &view.build;
    let build = vec![
        l("version", b.version),
        l("commit", b.commit),
        l("date", b.date),
        l("rustc", b.rustc),
        l("target", b.target),
    ];
    m.gauge(BUILD_INFO, build).set(1.0);
    pools(m, view);
    listeners(m, view);
    access_log(m, &view.access_log);
    process(m, view);
    stable(&m.render())
}

/// Each pool's and server's series.
fn pools(m: &Metrics, view: &View) {
    for pool in &view.pools {
        let pname = pool.name.clone();
        m.gauge(POOL_FAIL_OPEN, vec![l("pool", pname.clone())]).set(f64::from(u8::from(pool.all_down)));
        if view.cluster.is_some() && !pool.removed {
            m.gauge(POOL_CLUSTER_NODES, vec![l("pool", pname.clone())]).set(pool.cluster_nodes as f64);
        }
        for s in &pool.servers {
            let labels = || vec![l("pool", pname.clone()), l("server", s.label.clone())];
            m.gauge(SERVER_UP, labels()).set(f64::from(u8::from(s.eligible)));
            m.gauge(SERVER_ACTIVE, labels()).set(f64::from(s.active));
            if !s.removed {
                let ratio = s.warming.map_or(1.0, |w| w.weight_now / f64::from(s.weight.max(1)));
                m.gauge(SERVER_WEIGHT_RATIO, labels()).set(ratio);
            }
            m.counter(SERVER_CONNECTIONS, labels()).absolute(s.connections);
            m.counter(SERVER_RECEIVED, labels()).absolute(s.bytes_received);
            m.counter(SERVER_SENT, labels()).absolute(s.bytes_sent);
            for (reason, n) in &s.connect_failures_by_reason {
                let mut lb = labels();
                lb.push(l("reason", *reason));
                m.counter(SERVER_CONNECT_FAILURES, lb).absolute(*n);
            }
            let mut closed = labels();
            closed.push(l("reason", "server_down"));
            m.counter(SERVER_CLOSED, closed).absolute(s.sessions_closed);
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
}

/// Each listener's series.
fn listeners(m: &Metrics, view: &View) {
    for ls in &view.listeners {
        let name = || vec![l("listener", ls.local.to_string())];
        m.counter(LISTENER_ACCEPTED, name()).absolute(ls.accepted);
        m.gauge(LISTENER_ACTIVE, name()).set(ls.active as f64);
        m.gauge(LISTENER_CLIENTS, name()).set(ls.clients as f64);
        for r in &ls.routes {
            let mut lb = name();
            lb.push(l("route", r.name.clone()));
            lb.push(l("pool", r.pool.clone().unwrap_or_default()));
            m.counter(ROUTE_CONNECTIONS, lb.clone()).absolute(r.connections);
            m.counter(ROUTE_REFUSED, lb).absolute(r.refused);
        }
        if !ls.routes.is_empty() {
            m.counter(LISTENER_NOT_TLS, name()).absolute(ls.not_tls);
        }
        if let Some(pp) = &ls.proxy_protocol {
            for h in &pp.headers {
                let mut lb = name();
                lb.push(l("version", h.version));
                lb.push(l("command", h.command));
                m.counter(PROXY_PROTOCOL_HEADERS, lb).absolute(h.count);
            }
            for (reason, v) in &pp.refused {
                let mut lb = name();
                lb.push(l("reason", *reason));
                m.counter(PROXY_PROTOCOL_REFUSED, lb).absolute(*v);
            }
            m.counter(PROXY_PROTOCOL_UNTRUSTED, name()).absolute(pp.untrusted);
        }
        for (reason, v) in ls.refusals() {
            let mut lb = name();
            lb.push(l("reason", reason));
            m.counter(LISTENER_REJECTED, lb).absolute(v);
        }
    }
}

/// The process's own series: reloads, upgrades, the swarm's list.
fn process(m: &Metrics, view: &View) {
    m.counter(RELOADS, vec![l("result", "success")]).absolute(view.reload.successes);
    m.counter(RELOADS, vec![l("result", "failure")]).absolute(view.reload.failures);
    m.gauge(RELOAD_OK, vec![]).set(if view.reload.last_ok == Some(false) { 0.0 } else { 1.0 });
    m.gauge(START_TIME, vec![]).set(view.process.started_at as f64);
    m.counter(MOVED_IN, vec![]).absolute(view.process.moved_in);
    m.gauge(PREVIOUS_HOLDS, vec![]).set(view.process.previous_holds as f64);
    m.counter(UPGRADES_RESUMED, vec![]).absolute(view.process.upgrades_resumed);
    if let Some(c) = &view.cluster {
        for (reason, n) in &c.failures {
            m.counter(CLUSTER_REFRESH_FAILURES, vec![l("reason", *reason)]).absolute(*n);
        }
        m.gauge(CLUSTER_LIST_AGE, vec![]).set(c.age_s.or(c.never_read_s).unwrap_or(0) as f64);
    }
}

/// Each access-log destination's lines, by result and reason, and
/// whether the ones the config names are being written.
fn access_log(m: &Metrics, a: &crate::view::AccessLogStatus) {
    for d in &a.destinations {
        let log = || l("log", d.log.clone());
        m.counter(ACCESS_LOG_LINES, vec![log(), l("result", "written")]).absolute(d.written);
        let dropped = |reason: &'static str| vec![log(), l("result", "dropped"), l("reason", reason)];
        m.counter(ACCESS_LOG_LINES, dropped("queue_full")).absolute(d.dropped_queue_full);
        for (reason, n) in &d.lost {
            m.counter(ACCESS_LOG_LINES, dropped(reason)).absolute(*n);
        }
        if d.configured {
            m.gauge(ACCESS_LOG_WRITABLE, vec![log()]).set(f64::from(u8::from(d.state == "ok")));
        }
    }
}

/// The exposition `text` with its families sorted by name and the series
/// of each counter and gauge sorted; a histogram's lines keep their order
/// (buckets ascending, then sum and count, by series in registration order).
fn stable(text: &str) -> String {
    let mut families: Vec<(String, Vec<&str>)> = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let lines: Vec<&str> = block.lines().collect();
        let kind = lines.iter().find_map(|l| l.strip_prefix("# TYPE ")).unwrap_or("");
        let name = kind.split_whitespace().next().unwrap_or("").to_owned();
        let (mut head, mut samples): (Vec<&str>, Vec<&str>) = lines.into_iter().partition(|l| l.starts_with('#'));
        if kind.ends_with(" counter") || kind.ends_with(" gauge") {
            samples.sort_unstable();
        }
        head.append(&mut samples);
        families.push((name, head));
    }
    families.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(text.len());
    for (_, lines) in families {
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_series_come_in_one_order() {
        let text = "# HELP b_total B\n# TYPE b_total counter\nb_total{x=\"2\"} 1\nb_total{x=\"1\"} 1\n\n\
                    # TYPE a gauge\na 1\n\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"10\"} 2\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\n";
        let want = "# TYPE a gauge\na 1\n\n\
                    # HELP b_total B\n# TYPE b_total counter\nb_total{x=\"1\"} 1\nb_total{x=\"2\"} 1\n\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"10\"} 2\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\n";
        assert_eq!(stable(text), want);
    }

    #[test]
    fn two_scrapes_of_the_same_state_read_the_same() {
        let m = Metrics::new();
        for (i, name) in ["p1", "p2", "p3", "p4", "p5", "p6"].iter().enumerate() {
            m.gauge(SERVER_UP, vec![l("pool", *name), l("server", "s")]).set(1.0);
            m.counter(SERVER_CONNECTIONS, vec![l("pool", *name), l("server", "s")]).absolute(i as u64);
            m.counter(RELOADS, vec![l("result", *name)]).absolute(1);
        }
        let (a, b) = (stable(&m.render()), stable(&m.render()));
        assert_eq!(a, b);
        let first = a.lines().position(|l| l.contains("pool=\"p1\"")).unwrap();
        let last = a.lines().position(|l| l.contains("pool=\"p6\"")).unwrap();
        assert!(first < last, "{a}");
    }
}
