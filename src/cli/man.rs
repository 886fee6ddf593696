//! `ucp-lb --man`: the manual page ucp-lb(1) in roff, rendered by clap_mangen
//! from the same clap definition that parses the command line, so the page
//! names every option `--help` does. docs/man/ucp-lb.1 is its output,
//! committed (tests/docs.rs fails when the two differ); lb.toml(5) is
//! written by hand beside it. What clap does not know (environment,
//! signals, exit status, files) is the text below.

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

/// The date in the page's `.TH` line: when its text last changed in a way a
/// reader would notice (a fixed date, not the build's, so the committed
/// page stays what the binary prints).
const DATE: &str = "2026-12-07";

/// Sections after the generated ones: a heading, then its paragraphs,
/// each a tag (set in bold) and its text.
const EXTRA: &[(&str, &[(&str, &str)])] = &[
    (
        "ENVIRONMENT",
        &[
            ("UCP_LB_CONFIG", "The lb.toml to use when --config is not given. Set but empty is an error."),
            ("UCP_LB_WORKERS", "1 to 1024: overrides workers. Any other value stops the start and fails check."),
            ("UCP_LB_CONTROL_SOCKET", "Overrides [admin] control_socket."),
            ("UCP_LB_STOP_GRACE", "Overrides [defaults] stop_grace."),
            (
                "UCP_LB_SPLICE",
                "A measurement switch for the benchmark: shared splices only bulk transfers that share the \
                 proxy with another; the default, bulk, splices every one. Any other value stops the start.",
            ),
            ("RUST_LOG", "Filters the log, e.g. RUST_LOG=debug for one line per finished connection."),
        ],
    ),
    (
        "SIGNALS",
        &[
            (
                "SIGHUP",
                "Reload the config (as does a change of the file, and POST /reload). One that arrives during the start or a take-over is kept and applied once the balancer runs.",
            ),
            (
                "SIGTERM, SIGINT",
                "Stop: /healthz answers 503 for stop_grace while the listeners still accept, then they \
                 close and open connections get shutdown_timeout to finish. A second signal skips the rest \
                 of the stop grace; a signal during the drain stops at once.",
            ),
            ("SIGUSR1", "Reopen the access log files (logrotate)."),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("0", "A clean stop; check found no error; healthcheck got 200."),
            (
                "1",
                "The config is invalid, a server name does not resolve, or a listener cannot bind (the \
                 message names file, line, column and key, or the listener); healthcheck got no 200.",
            ),
        ],
    ),
    (
        "FILES",
        &[
            (
                "/etc/ucp-lb/lb.toml",
                "The config, as the container image and the systemd units name it; see lb.toml(5).",
            ),
            ("/run/ucp-lb/control.sock", "The control socket an upgrade (--upgrade) takes over through."),
        ],
    ),
    (
        "SEE ALSO",
        &[(
            "lb.toml(5)",
            "The configuration file. docs/ in the source tree: configuration.md, behaviour.md, \
             operations.md, performance.md.",
        )],
    ),
];

/// ucp-lb(1) for `cli`, the top-level clap command.
pub fn page(cli: clap::Command) -> std::io::Result<String> {
    // The implicit `help` sub-command is clap's, not ours: no entry for it.
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let man = Man::new(cli.clone())
        .title("UCP-LB")
        .section("1")
        .date(DATE)
        .source(format!("ucp-lb {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    let mut page = Page::default();
    page.part(|w| man.render_title(w))?;
    page.part(|w| man.render_name_section(w))?;
    page.part(|w| man.render_synopsis_section(w))?;
    page.part(|w| man.render_description_section(w))?;
    if let Some(after) = cli.get_after_help() {
        page.roff(Roff::new().control("PP", []).text([roman(after.to_string())]));
    }
    page.part(|w| man.render_options_section(w))?;

    page.roff(Roff::new().control("SH", ["COMMANDS"]));
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut roff = Roff::new();
        roff.control("SS", [format!("ucp-lb {}", sub.get_name()).as_str()]);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            for line in about.to_string().lines().filter(|l| !l.trim().is_empty()) {
                roff.text([roman(line)]);
            }
        }
        page.roff(&roff);
        // --log-format and --help are the same for every command: listed once, above.
        let sub = Man::new(
            sub.clone().mut_args(|a| if a.is_global_set() || a.get_id() == "help" { a.hide(true) } else { a }),
        );
        // Each part opens a `.SH` of its own; within COMMANDS it is a paragraph.
        page.nested(|w| sub.render_synopsis_section(w))?;
        page.nested(|w| sub.render_options_section(w))?;
    }

    let mut roff = Roff::new();
    for (heading, entries) in EXTRA {
        roff.control("SH", [*heading]);
        for (tag, text) in *entries {
            roff.control("TP", []).text([bold(*tag)]).text([roman(*text)]);
        }
    }
    page.roff(&roff);
    Ok(page.0)
}

/// The page being put together. Each clap_mangen part comes with roff's
/// preamble (the apostrophe string); the page keeps the first only.
#[derive(Default)]
struct Page(String);

impl Page {
    fn part(&mut self, render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        render(&mut buf)?;
        self.push(String::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(())
    }

    /// A part whose section heading becomes a paragraph break.
    fn nested(&mut self, render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        render(&mut buf)?;
        let text = String::from_utf8(buf).map_err(std::io::Error::other)?;
        let lines: Vec<&str> = text.lines().map(|l| if l.starts_with(".SH ") { ".PP" } else { l }).collect();
        self.push(lines.join("\n") + "\n");
        Ok(())
    }

    fn roff(&mut self, roff: &Roff) {
        self.push(roff.render());
    }

    fn push(&mut self, text: String) {
        let preamble = Roff::new().render();
        match text.strip_prefix(preamble.as_str()) {
            Some(rest) if !self.0.is_empty() => self.0.push_str(rest),
            _ => self.0.push_str(&text),
        }
    }
}
