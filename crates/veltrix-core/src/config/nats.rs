//! `type = "nats"` sources and sinks: their config and its checks at load (server URLs,
//! subjects, stream and consumer names, the sink's subject and message-id templates), so a
//! mistake is reported at its `file:line:col` before anything connects.

use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::diagnostic::did_you_mean;
use super::lints::codes;
use super::template::{Field, Template, TemplateError};
use super::{Decoder, Key, SinkConfig, SourceConfig, Value, get};

/// `[sources.NAME]` with `type = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSourceConfig {
    /// Server URLs, comma-separated (`nats://host:port`); see [`nats_servers`].
    pub url: String,
    /// Core: the subjects subscribed. JetStream: the stream's subjects when it is created, and
    /// the consumer's filter (empty: the whole existing stream).
    pub subjects: Vec<String>,
    pub mode: NatsSourceMode,
    /// Most messages stored at once (one group commit), and per pull request.
    pub batch_events: u64,
}

/// How a NATS source consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsSourceMode {
    /// A durable pull consumer with explicit acks: at-least-once.
    JetStream(JetStreamConsumer),
    /// A plain subscription: at-most-once.
    Core,
}

/// The JetStream side of a NATS source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConsumer {
    pub stream: String,
    /// The durable consumer's name; default the source's name.
    pub consumer: String,
    /// Create the stream (with `subjects`) when it does not exist; default true.
    pub create_stream: bool,
    /// A message not acknowledged this long after delivery is delivered again; default 30 s.
    pub ack_wait: Duration,
}

/// `[sinks.NAME]` with `type = "nats"`.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSinkConfig {
    /// Server URLs, comma-separated (`nats://host:port`).
    pub url: String,
    /// The subject each event is published to (a valid publish subject once rendered).
    pub subject: Template,
    /// Publish through JetStream and wait for every PubAck (default), or core publish + flush.
    pub jetstream: bool,
    /// The `Nats-Msg-Id` header (JetStream's deduplication key); default `{{ .source }}/{{ .id }}`.
    pub msg_id: Template,
    /// Longest wait for a batch's PubAcks (JetStream) or its flush (core); default 10 s.
    pub timeout: Duration,
}

pub(super) const NATS_SOURCE_KEYS: &[&str] = &[
    "type",
    "url",
    "mode",
    "stream",
    "subjects",
    "consumer",
    "create_stream",
    "batch_events",
    "ack_wait",
];
pub(super) const NATS_SINK_KEYS: &[&str] =
    &["type", "url", "subject", "jetstream", "msg_id", "timeout"];
pub(super) const NATS_MODES: &[&str] = &["jetstream", "core"];
/// The keys that only mean something to a JetStream consumer.
const JETSTREAM_ONLY_KEYS: &[&str] = &["stream", "consumer", "create_stream", "ack_wait"];

pub(super) const DEFAULT_NATS_BATCH_EVENTS: u64 = 100;
pub(super) const NATS_BATCH_EVENTS_MAX: i64 = 10_000;
pub(super) const DEFAULT_NATS_ACK_WAIT: Duration = Duration::from_secs(30);
/// Below this, the in-progress acks sent while a full queue holds a batch would be too frequent.
pub(super) const NATS_ACK_WAIT_MIN: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_NATS_MSG_ID: &str = "{{ .source }}/{{ .id }}";
/// Stream and consumer names become file names on the server.
pub(super) const NATS_NAME_LEN_MAX: usize = 255;

/// The `(host, port)` of every server in a NATS `url` (comma-separated `nats://[user[:pass]@]host[:port]`,
/// port 4222 by default). `Err` says what is wrong with the first bad one.
pub fn nats_servers(url: &str) -> Result<Vec<(String, u16)>, String> {
    let mut servers = Vec::new();
    for item in url.split(',').map(str::trim) {
        let Some(rest) = item.strip_prefix("nats://") else {
            return Err(format!("{item:?} is not a nats:// URL"));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(format!("{item:?} has an unclosed `[`"));
            };
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{item:?} has no host"));
        }
        let port = match port {
            None => 4222,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{item:?} has an invalid port `{p}`"))?,
        };
        servers.push((host.to_owned(), port));
    }
    Ok(servers)
}

/// What is wrong with `subject` as a NATS subject, if anything. `wildcards`: whether `*` and
/// `>` are allowed (subscriptions and filters; never when publishing).
pub fn nats_subject_problem(subject: &str, wildcards: bool) -> Option<String> {
    if subject.is_empty() {
        return Some("a subject must not be empty".to_owned());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("a subject must not contain spaces or control characters".to_owned());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Some(
                "a subject must not have an empty token (`..`, or a leading or trailing `.`)"
                    .to_owned(),
            );
        }
        let wildcard = *token == "*" || *token == ">";
        if !wildcard && token.contains(['*', '>']) {
            return Some(format!(
                "`{token}`: `*` and `>` are wildcards and must be whole tokens"
            ));
        }
        if wildcard && !wildcards {
            return Some("a subject published to cannot hold the wildcards `*` or `>`".to_owned());
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Some("`>` must be the last token".to_owned());
        }
    }
    None
}

/// What is wrong with `name` as a JetStream stream or consumer name, if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > NATS_NAME_LEN_MAX {
        return Some(format!("must be at most {NATS_NAME_LEN_MAX} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || ['.', '*', '>', '/', '\\'].contains(c))
    {
        return Some(format!("must not contain {c:?}"));
    }
    None
}

impl Decoder<'_> {
    /// `[sources.NAME]` with `type = "nats"` (its `type` already checked).
    pub(super) fn nats_source(
        &mut self,
        name: &Key<'_>,
        table: &DeTable<'_>,
        what: &str,
    ) -> Option<SourceConfig> {
        self.check_keys(table, what, NATS_SOURCE_KEYS);
        let mut valid = true;
        let url = self.nats_url(table, name, what);
        valid &= url.is_some();
        let core = match get(table, "mode") {
            Some(v) => match self.choice(v, "mode", NATS_MODES) {
                Some(i) => NATS_MODES[i] == "core",
                None => return None,
            },
            None => false,
        };
        let mut subjects = Vec::new();
        let subjects_value = get(table, "subjects");
        if let Some(v) = subjects_value {
            for (subject, span) in self.strings(v, "subjects", true).unwrap_or_default() {
                match nats_subject_problem(&subject, true) {
                    None => subjects.push(subject),
                    Some(problem) => {
                        self.error_coded(
                            codes::INVALID_VALUE,
                            span,
                            format!("invalid subject {subject:?}: {problem}"),
                            Some("subjects are dot-separated tokens, e.g. \"orders.>\" or \"orders.*.created\"".to_owned()),
                        );
                        valid = false;
                    }
                }
            }
            if subjects.is_empty() && valid {
                self.error_coded(
                    codes::INVALID_VALUE,
                    v.span(),
                    "`subjects` must name at least one subject",
                    Some("for example `subjects = [\"orders.>\"]`".to_owned()),
                );
                valid = false;
            }
        }
        let mut batch_events = DEFAULT_NATS_BATCH_EVENTS;
        if let Some(v) = get(table, "batch_events") {
            match self.integer(v, "batch_events", 1..NATS_BATCH_EVENTS_MAX + 1) {
                Some(n) => batch_events = u64::try_from(n).expect("range-checked"),
                None => valid = false,
            }
        }
        if core {
            for key in JETSTREAM_ONLY_KEYS {
                if let Some((k, _)) = table.iter().find(|(k, _)| k.get_ref() == *key) {
                    self.error_coded(
                        codes::CONFLICT,
                        k.span(),
                        format!(
                            "`{key}` is for JetStream, but {what} has `mode = \"core\"` (a plain \
                             subscription to `subjects`)"
                        ),
                        Some(
                            "remove it, or remove `mode = \"core\"` to consume a stream".to_owned(),
                        ),
                    );
                    valid = false;
                }
            }
            if subjects_value.is_none() {
                let hint = "add the subjects to subscribe to, e.g. `subjects = [\"orders.>\"]`";
                self.missing(table, "subjects", name.span(), what, hint.to_owned());
                valid = false;
            }
            return valid.then(|| {
                SourceConfig::Nats(NatsSourceConfig {
                    url: url.expect("valid"),
                    subjects,
                    mode: NatsSourceMode::Core,
                    batch_events,
                })
            });
        }
        let stream = match get(table, "stream") {
            Some(v) => self.nats_name(v, "stream"),
            None => {
                let hint = "add the JetStream stream to consume, e.g. `stream = \"ORDERS\"`, or \
                            `mode = \"core\"` for a plain subscription (at-most-once)";
                self.missing(table, "stream", name.span(), what, hint.to_owned());
                None
            }
        };
        valid &= stream.is_some();
        let consumer = match get(table, "consumer") {
            Some(v) => self.nats_name(v, "consumer"),
            None => Some(name.get_ref().to_string()),
        };
        valid &= consumer.is_some();
        let mut create_stream = true;
        if let Some(v) = get(table, "create_stream") {
            match self.boolean(v, "create_stream") {
                Some(b) => create_stream = b,
                None => valid = false,
            }
        }
        if create_stream && subjects_value.is_none() {
            let hint = "add the stream's subjects, used when the stream is created, e.g. \
                        `subjects = [\"orders.>\"]`; or `create_stream = false` to consume an \
                        existing stream whole";
            self.missing(table, "subjects", name.span(), what, hint.to_owned());
            valid = false;
        }
        let mut ack_wait = DEFAULT_NATS_ACK_WAIT;
        if let Some(v) = get(table, "ack_wait") {
            match self.duration(v, "ack_wait") {
                Some(d) if d >= NATS_ACK_WAIT_MIN => ack_wait = d,
                Some(_) => {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        "`ack_wait` must be at least 1s",
                        Some("it is how long NATS waits for an acknowledgement before redelivering; 30s is the default".to_owned()),
                    );
                    valid = false;
                }
                None => valid = false,
            }
        }
        valid.then(|| {
            SourceConfig::Nats(NatsSourceConfig {
                url: url.expect("valid"),
                subjects,
                mode: NatsSourceMode::JetStream(JetStreamConsumer {
                    stream: stream.expect("valid"),
                    consumer: consumer.expect("valid"),
                    create_stream,
                    ack_wait,
                }),
                batch_events,
            })
        })
    }

    /// `[sinks.NAME]` with `type = "nats"` (its `type` already checked).
    pub(super) fn nats_sink(
        &mut self,
        name: &Key<'_>,
        table: &DeTable<'_>,
        what: &str,
    ) -> Option<SinkConfig> {
        self.check_keys(table, what, NATS_SINK_KEYS);
        let url = self.nats_url(table, name, what);
        let subject = match get(table, "subject") {
            Some(v) => self.template(v, "subject").and_then(|t| {
                // Each field renders as at least one valid token (see the sink), so a
                // placeholder stands for one here.
                let mut probe = String::new();
                t.render(|_| Some("x"), |v, out| out.push_str(v), &mut probe);
                match nats_subject_problem(&probe, false) {
                    None => Some(t),
                    Some(problem) => {
                        self.error_coded(
                            codes::INVALID_VALUE,
                            v.span(),
                            format!("`subject` is not a subject one can publish to: {problem}"),
                            Some("for example `subject = \"processed.{{ .type }}\"`".to_owned()),
                        );
                        None
                    }
                }
            }),
            None => {
                let hint =
                    "add the subject to publish to, e.g. `subject = \"processed.{{ .type }}\"`";
                self.missing(table, "subject", name.span(), what, hint.to_owned());
                None
            }
        };
        let mut valid = true;
        let jetstream = match get(table, "jetstream") {
            Some(v) => self.boolean(v, "jetstream").unwrap_or_else(|| {
                valid = false;
                true
            }),
            None => true,
        };
        let msg_id = match get(table, "msg_id") {
            Some(v) => self.template(v, "msg_id"),
            None => Some(Template::parse(DEFAULT_NATS_MSG_ID).expect("valid default")),
        };
        let timeout = match get(table, "timeout") {
            Some(v) => self.duration(v, "timeout"),
            None => Some(super::DEFAULT_HTTP_TIMEOUT),
        };
        if !valid {
            return None;
        }
        Some(SinkConfig::Nats(NatsSinkConfig {
            url: url?,
            subject: subject?,
            jetstream,
            msg_id: msg_id?,
            timeout: timeout?,
        }))
    }

    fn nats_url(&mut self, table: &DeTable<'_>, name: &Key<'_>, what: &str) -> Option<String> {
        let Some(v) = get(table, "url") else {
            let hint = "add `url = \"nats://127.0.0.1:4222\"`";
            self.missing(table, "url", name.span(), what, hint.to_owned());
            return None;
        };
        let url = self.non_empty_string(v, "url")?;
        match nats_servers(&url) {
            Ok(_) => Some(url),
            Err(problem) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    v.span(),
                    format!("`url`: {problem}"),
                    Some(
                        "write nats://HOST:PORT, e.g. \"nats://127.0.0.1:4222\"; several servers \
                         comma-separated (TLS is not supported yet)"
                            .to_owned(),
                    ),
                );
                None
            }
        }
    }

    fn nats_name(&mut self, value: &Value<'_>, key: &str) -> Option<String> {
        let text = self.string(value, key)?;
        match name_problem(&text) {
            None => Some(text),
            Some(problem) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    format!("`{key}` {problem}"),
                    Some(format!(
                        "a JetStream {key} name is 1 to {NATS_NAME_LEN_MAX} characters without \
                         spaces, `.`, `*`, `>`, `/` or `\\`, e.g. \"ORDERS\""
                    )),
                );
                None
            }
        }
    }

    fn boolean(&mut self, value: &Value<'_>, key: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            DeValue::String(s) if s.as_ref() == "true" || s.as_ref() == "false" => {
                let hint = format!("remove the quotes: `{key} = {s}`");
                self.wrong_type(value, key, "a boolean", Some(hint));
                None
            }
            _ => {
                self.wrong_type(value, key, "a boolean (`true` or `false`)", None);
                None
            }
        }
    }

    /// A `{{ .field }}` template; an error points at the placeholder when the string is written
    /// without escapes (so its bytes are the template's), else at the whole value.
    fn template(&mut self, value: &Value<'_>, key: &str) -> Option<Template> {
        let text = self.string(value, key)?;
        match Template::parse(&text) {
            Ok(t) => Some(t),
            Err(TemplateError {
                range,
                message,
                unknown_field,
            }) => {
                let span = self.span_within_string(value.span(), &text, range);
                let fields: Vec<String> = Field::NAMES
                    .iter()
                    .map(|(n, _)| format!("`.{n}`"))
                    .collect();
                let hint = unknown_field
                    .and_then(|f| did_you_mean(&f, Field::NAMES.iter().map(|(n, _)| *n)))
                    .map(|h| h.replacen('`', "`.", 1))
                    .map_or_else(
                        || {
                            format!(
                                "template fields are {}, written `{{{{ .type }}}}`",
                                fields.join(", ")
                            )
                        },
                        |h| format!("{h} (fields: {})", fields.join(", ")),
                    );
                self.error_coded(
                    codes::INVALID_VALUE,
                    span,
                    format!("`{key}`: {message}"),
                    Some(hint),
                );
                None
            }
        }
    }

    /// The bytes `range` of a string value's text, in the file: exact when the value is written
    /// as a quoted string whose text is verbatim, else the whole value.
    fn span_within_string(
        &self,
        span: Range<usize>,
        text: &str,
        range: Range<usize>,
    ) -> Range<usize> {
        let written = self
            .source
            .expanded
            .text
            .get(span.clone())
            .unwrap_or_default();
        let verbatim = written.len() == text.len() + 2
            && written.get(1..written.len() - 1) == Some(text)
            && (written.starts_with('"') || written.starts_with('\''));
        if verbatim {
            span.start + 1 + range.start..span.start + 1 + range.end
        } else {
            span
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_parsed_with_the_default_port() {
        assert_eq!(
            nats_servers("nats://127.0.0.1:4222, nats://user:pw@nats.local,nats://[::1]:5222"),
            Ok(vec![
                ("127.0.0.1".to_owned(), 4222),
                ("nats.local".to_owned(), 4222),
                ("::1".to_owned(), 5222),
            ])
        );
        assert!(
            nats_servers("tls://x:4222")
                .unwrap_err()
                .contains("not a nats:// URL")
        );
        assert!(
            nats_servers("nats://:4222")
                .unwrap_err()
                .contains("no host")
        );
        assert!(
            nats_servers("nats://h:0")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(nats_servers("nats://h,").unwrap_err().contains("\"\""));
    }

    #[test]
    fn subjects_follow_the_nats_token_rules() {
        for ok in ["a", "orders.>", "a.*.c", "*", ">", "a-b_c.d/e:f"] {
            assert_eq!(nats_subject_problem(ok, true), None, "{ok}");
        }
        assert_eq!(nats_subject_problem("orders.created", false), None);
        for (bad, why) in [
            ("", "empty"),
            ("a b", "spaces"),
            ("a..b", "empty token"),
            (".a", "empty token"),
            ("a.", "empty token"),
            ("a.b*", "whole tokens"),
            ("a.>.b", "last token"),
        ] {
            let problem = nats_subject_problem(bad, true).unwrap_or_default();
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
        assert!(
            nats_subject_problem("a.*", false)
                .unwrap()
                .contains("wildcards")
        );
    }

    #[test]
    fn stream_names_refuse_separators() {
        assert_eq!(name_problem("ORDERS-1_x"), None);
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem(&"x".repeat(256)).unwrap().contains("255"));
    }
}
