//! What the user sees while a run goes: one line per task transition on stderr; on a TTY also
//! a status line that is rewritten in place. Every line also goes into `logs.jsonl`.

use crate::logging::RunLog;
use crate::settings::LogFormat;
use orchestra_proto::{RunEvent, TaskEvent, TaskId};
use std::io::Write;
use std::time::Instant;
use tracing::Level;

pub struct Progress {
    log: RunLog,
    tty: bool,
    json: bool,
    quiet: bool,
    start: Instant,
    total: u32,
    done: u32,
    failed: u32,
    running: u32,
}

impl Progress {
    /// `format` is the config's `logging.format`: `auto` uses a live status line on a
    /// terminal, `plain` never does, `json` prints each line as a JSON object.
    pub fn new(log: RunLog, total: u32, quiet: bool, format: LogFormat) -> Self {
        use is_terminal::IsTerminal;
        let tty = format == LogFormat::Auto
            && std::io::stderr().is_terminal()
            && std::env::var_os("NO_PROGRESS").is_none();
        let json = format == LogFormat::Json;
        Self { log, tty, json, quiet, start: Instant::now(), total, done: 0, failed: 0, running: 0 }
    }

    /// Prints a line and records it in the run log, unless quiet hides it.
    pub fn line(&mut self, level: Level, text: &str) {
        self.emit(level, text, None);
    }

    /// A line about one attempt of a task (attempt 0: the task never ran).
    fn task_line(&mut self, level: Level, text: &str, task: &TaskId, attempt: u32) {
        self.emit(level, text, Some((task, attempt)));
    }

    fn emit(&mut self, level: Level, text: &str, task: Option<(&TaskId, u32)>) {
        if self.quiet && level > Level::WARN {
            return;
        }
        self.log.console(level, text, task);
        let secs = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.json {
            let obj = serde_json::json!({
                "ts": orchestra_proto::Timestamp::now(),
                "level": level.as_str().to_ascii_lowercase(),
                "elapsed_s": (secs * 1000.0).round() / 1000.0,
                "msg": text,
            });
            let _ = writeln!(err, "{obj}");
            return;
        }
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "[{secs:7.2}s] {text}");
        if self.tty && !self.quiet {
            let _ = write!(
                err,
                "  {}/{} done · {} running · {} failed",
                self.done, self.total, self.running, self.failed
            );
        }
        let _ = err.flush();
    }

    /// Clears the status line.
    pub fn finish(&mut self) {
        if self.tty && !self.quiet {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }

    pub fn task_event(&mut self, task: &TaskId, attempt: u32, ev: &TaskEvent, dry_run: bool) {
        match ev {
            TaskEvent::Started { argv, .. } => {
                self.running += 1;
                let verb = if dry_run { "would run" } else { "started  " };
                let text = format!("{verb} {task}#{attempt}: {}", one_line_argv(argv, 80));
                self.task_line(Level::INFO, &text, task, attempt);
            }
            TaskEvent::OutputCapped { stream, limit_bytes } => self.line(
                Level::WARN,
                &format!(
                    "output cap of {limit_bytes} bytes hit on {task}#{attempt} {}",
                    stream.as_str()
                ),
            ),
            TaskEvent::Finished(_) => self.running = self.running.saturating_sub(1),
            TaskEvent::Output { .. } | TaskEvent::Heartbeat {} => {}
        }
    }

    pub fn run_event(&mut self, ev: &RunEvent) {
        match ev {
            RunEvent::TaskDispatched { .. } => {}
            RunEvent::TaskSucceeded { task_id, attempt } => {
                self.done += 1;
                self.task_line(
                    Level::INFO,
                    &format!("succeeded {task_id}#{attempt}"),
                    task_id,
                    *attempt,
                );
            }
            RunEvent::TaskRetrying { task_id, attempt, delay_ms, failure } => self.task_line(
                Level::WARN,
                &format!("retrying  {task_id}#{attempt} in {delay_ms}ms: {failure}"),
                task_id,
                *attempt,
            ),
            RunEvent::TaskFailed { task_id, attempt, failure } => {
                self.done += 1;
                self.failed += 1;
                let text = format!("failed    {task_id}#{attempt}: {failure}");
                self.task_line(Level::ERROR, &text, task_id, *attempt);
            }
            RunEvent::TaskSkipped { task_id, reason } => {
                self.done += 1;
                self.task_line(Level::WARN, &format!("skipped   {task_id}: {reason}"), task_id, 0);
            }
            RunEvent::TaskCancelled { task_id } => {
                self.done += 1;
                self.task_line(Level::WARN, &format!("cancelled {task_id}"), task_id, 0);
            }
            RunEvent::Cancelling { reason } => {
                self.line(Level::WARN, &format!("cancelling the run: {reason}"));
            }
            RunEvent::Finished(_) => {}
        }
    }
}

/// An argv as one readable line: arguments with spaces or quotes single-quoted, newlines shown
/// as `\n`, cut at `max` characters with `…`.
pub fn one_line_argv(argv: &[String], max: usize) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| {
            let a = a.replace('\n', "\\n");
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$`\\;&|<>(){}*?".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect();
    let line = quoted.join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::one_line_argv;

    #[test]
    fn argv_on_one_line() {
        let check = |argv: &[&str], max: usize, want: &str| {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            assert_eq!(one_line_argv(&argv, max), want);
        };
        check(&["make", "-j2"], 100, "make -j2");
        check(&["sh", "-c", "echo hi\nexit 3"], 100, r"sh -c 'echo hi\nexit 3'");
        check(&["echo", "it's"], 100, r"echo 'it'\''s'");
        check(&["echo", ""], 100, "echo ''");
        check(&["abcdef", "ghij"], 6, "abcde…");
    }
}
