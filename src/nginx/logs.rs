//! `log_format` and `access_log` as ucp-lb's access log and its template.

use super::ConvertError;
use super::convert::{AccessLog, Converter};
use super::read::Directive;

impl Converter {
    /// `log_format NAME [escape=...] 'part' ...`: kept as a ucp-lb template,
    /// with the variables ucp-lb has not got written as "-" (and said).
    pub(super) fn log_format(&mut self, d: &Directive) -> Result<(), ConvertError> {
        let Some((name, rest)) = d.args.split_first() else {
            return Err(d.err("log_format needs a name and a format"));
        };
        let parts: Vec<&String> = rest.iter().filter(|a| !a.starts_with("escape=")).collect();
        let text: String = parts.iter().map(|s| s.as_str()).collect();
        let missing: Vec<&str> = crate::config::template_variables(&text)
            .into_iter()
            .filter(|v| !crate::config::LOG_VARIABLES.contains(v))
            .collect();
        let mut template = text.clone();
        for v in &missing {
            template = template.replace(&format!("${{{v}}}"), "-").replace(&format!("${v}"), "-");
        }
        if !missing.is_empty() {
            let vars = missing.iter().map(|v| format!("${v}")).collect::<Vec<_>>().join(", ");
            let n = self.warn(d, format!("log_format {name}: {vars} not carried (written as \"-\")"));
            self.head_notes.push(n);
        }
        self.log_formats.insert(name.clone(), template);
        Ok(())
    }

    /// `access_log off;` or `access_log PATH FORMAT [...];`.
    pub(super) fn access_log(&mut self, d: &Directive, notes: &mut Vec<String>) -> Result<AccessLog, ConvertError> {
        match d.args.as_slice() {
            [off] if off == "off" => Ok(AccessLog::Off),
            [path, rest @ ..] => {
                let (format, extra) = match rest.split_first() {
                    Some((f, extra)) if !f.contains('=') => (Some(f), extra),
                    _ => (None, rest),
                };
                let template = match format {
                    Some(f) => match self.log_formats.get(f) {
                        Some(t) => Some(t.clone()),
                        None => {
                            return Err(
                                d.err(format!("access_log: no log_format named \"{f}\" (nginx refuses this too)"))
                            );
                        }
                    },
                    None => None,
                };
                if !extra.is_empty() {
                    let what = extra.join(" ");
                    let n = self.warn(d, format!("access_log {what}: written line by line, not carried"));
                    notes.push(n);
                }
                Ok(AccessLog::To { path: path.clone(), template })
            }
            [] => Err(d.err("access_log needs a path or off")),
        }
    }
}
