//! Logging: operators' tracing to stderr, and the run's `logs.jsonl`.
//!
//! `logs.jsonl` gets one JSON object per line from every layer of the process: `ts`, `level`,
//! `layer` (L1/L2/L3/bus), `target`, `msg`, every field of every enclosing span and of the
//! event, and always `run_id` and `trace_id` (filled from the current run when a layer's span
//! does not carry them). Lines printed to the console by L1 are recorded too (`layer: "L1"`,
//! `console: true`).

use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

struct Sink {
    file: File,
    run_id: String,
    trace_id: String,
}

/// Where the run log goes; set once the run directory exists.
#[derive(Clone, Default)]
pub struct RunLog {
    sink: Arc<Mutex<Option<Sink>>>,
}

impl RunLog {
    /// Starts writing `logs.jsonl` for a run (appending, so a resumed run keeps its history).
    pub fn open(&self, path: &Path, run_id: &str, trace_id: &str) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Sink { file, run_id: run_id.into(), trace_id: trace_id.into() });
        Ok(())
    }

    pub fn close(&self) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn write(&self, mut obj: Map<String, Value>) {
        let mut guard = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sink) = guard.as_mut() else { return };
        obj.entry("run_id").or_insert_with(|| Value::String(sink.run_id.clone()));
        obj.entry("trace_id").or_insert_with(|| Value::String(sink.trace_id.clone()));
        let mut line = serde_json::to_vec(&obj).unwrap_or_default();
        line.push(b'\n');
        // One write per line: lines from concurrent layers never interleave.
        let _ = sink.file.write_all(&line);
    }

    /// Records a line that L1 printed for the user; lines about a task carry its id and attempt.
    pub fn console(&self, level: Level, line: &str, task: Option<(&orchestra_proto::TaskId, u32)>) {
        let mut obj = Map::new();
        if let Some((task, attempt)) = task {
            obj.insert("task_id".into(), task.as_str().into());
            obj.insert("attempt".into(), attempt.into());
        }
        obj.insert("ts".into(), now_value());
        obj.insert("level".into(), level_value(level));
        obj.insert("layer".into(), "L1".into());
        obj.insert("console".into(), true.into());
        obj.insert("msg".into(), line.into());
        self.write(obj);
    }
}

fn now_value() -> Value {
    Value::String(orchestra_proto::Timestamp::now().rfc3339())
}

fn level_value(level: Level) -> Value {
    Value::String(level.as_str().to_ascii_lowercase())
}

fn layer_of(target: &str) -> &'static str {
    if target.starts_with("orchestra_coordinator") {
        "L2"
    } else if target.starts_with("orchestra_worker") {
        "L3"
    } else if target.starts_with("orchestra_bus") {
        "bus"
    } else {
        "L1"
    }
}

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// A tracing layer writing every event into the run's `logs.jsonl`.
struct JsonlLayer {
    log: RunLog,
}

impl<S> Layer<S> for JsonlLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.log.sink.lock().map(|g| g.is_none()).unwrap_or(true) {
            return;
        }
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert("ts".into(), now_value());
        obj.insert("level".into(), level_value(*meta.level()));
        obj.insert("layer".into(), layer_of(meta.target()).into());
        obj.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<Fields>() {
                    obj.extend(fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(msg) = fields.0.remove("message") {
            obj.insert("msg".into(), msg);
        }
        obj.extend(fields.0);
        self.log.write(obj);
    }
}

/// Installs the global subscriber: human logs on stderr at `console_level` (overridable with
/// `RUST_LOG`), and everything at debug and above into the run log once it is opened.
///
/// Safe to call again (`orchestra eval` runs many runs in one process): later calls return the
/// run log of the first and keep its console level.
pub fn init(console_level: &str) -> RunLog {
    static INSTALLED: std::sync::OnceLock<RunLog> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| install(console_level)).clone()
}

fn install(console_level: &str) -> RunLog {
    let log = RunLog::default();
    let console_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,orchestra={console_level}")));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .with_filter(console_filter);
    let file = JsonlLayer { log: log.clone() }.with_filter(EnvFilter::new(
        "info,orchestra=debug,orchestra_coordinator=debug,orchestra_worker=debug",
    ));
    let _ = tracing_subscriber::registry().with(console).with(file).try_init();
    log
}
