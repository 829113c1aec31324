//! JSON log lines without re-parsing: the same shape as `tracing_subscriber`'s JSON format
//! with a flattened event and the current span (`{"timestamp", "level", <event fields>,
//! "target", "span": {<span fields>, "name"}}`), built by appending.
//!
//! `tracing_subscriber`'s JSON formatter keeps a span's fields as a JSON object string, so each
//! `Span::record` parses that string, adds the field and writes it again, and each event
//! inside the span parses it once more to print it. A call's span records four or five fields
//! and prints one line: that parsing was a measurable share of a call's CPU (BENCHMARKS.md).
//! Here a span's fields are a JSON *fragment* (`"a":1,"b":"x",`) that recording appends to and
//! printing copies.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats span fields as a JSON fragment: `"name":value,` per field.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFragment;

impl<'writer> FormatFields<'writer> for JsonFragment {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FragmentVisitor::new(&mut writer);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut writer = current.as_writer();
        let mut visitor = FragmentVisitor::new(&mut writer);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// One JSON object per event, with the current span's fields.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFragment> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFragment>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        writer.write_str("{\"timestamp\":")?;
        write_json_string(&mut writer, &timestamp)?;
        writer.write_str(",\"level\":")?;
        write_json_string(&mut writer, event.metadata().level().as_str())?;
        writer.write_char(',')?;
        let mut visitor = FragmentVisitor::new(&mut writer);
        event.record(&mut visitor);
        visitor.result?;
        writer.write_str("\"target\":")?;
        write_json_string(&mut writer, event.metadata().target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            if let Some(fields) = span.extensions().get::<FormattedFields<JsonFragment>>() {
                writer.write_str(fields)?;
            }
            writer.write_str("\"name\":")?;
            write_json_string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes each field as `"name":value,`.
struct FragmentVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl<'a, 'w> FragmentVisitor<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>) -> Self {
        Self {
            writer,
            result: Ok(()),
        }
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = write_json_string(self.writer, field.name())
            .and_then(|()| self.writer.write_char(':'))
            .and_then(|()| value(self.writer))
            .and_then(|()| self.writer.write_char(','));
    }
}

impl Visit for FragmentVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_json_string(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |w| write!(w, "{value}"));
        } else {
            self.field(field, |w| write_json_string(w, &value.to_string()));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |w| write_json_string(w, &value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write_json_string(w, &format!("{value:?}")));
    }
}

/// `text` as a JSON string literal.
fn write_json_string(writer: &mut impl fmt::Write, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        writer.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or(' ');
        match c {
            '"' => writer.write_str("\\\"")?,
            '\\' => writer.write_str("\\\\")?,
            '\n' => writer.write_str("\\n")?,
            '\r' => writer.write_str("\\r")?,
            '\t' => writer.write_str("\\t")?,
            other => write!(writer, "\\u{:04x}", u32::from(other))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    writer.write_str(rest)?;
    writer.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let mut out = String::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }

    /// Captures what the layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_event_in_a_span_is_one_json_object_with_the_recorded_fields() {
        let captured = Captured::default();
        let sink = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFragment)
            .event_format(JsonLines)
            .with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                method = "GetTodo",
                outcome = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("outcome", "fresh");
            span.record("latency_ms", 1.5);
            tracing::info!(code = 0, error = %"a \"quoted\" cause", "rpc finished");
        });
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {});
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().next().expect("one line");
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        assert!(
            line.ends_with(
                r#""level":"INFO","message":"rpc finished","code":0,"error":"a \"quoted\" cause","target":"todo_service::telemetry::json::tests","span":{"method":"GetTodo","outcome":"fresh","latency_ms":1.5,"name":"rpc"}}"#
            ),
            "{line}"
        );
    }
}
