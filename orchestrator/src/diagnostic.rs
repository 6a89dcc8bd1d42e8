//! User-facing errors about input files, rendered in the house format:
//!
//! ```text
//! error: invalid scenario `examples/bad.yaml`
//!   --> examples/bad.yaml:7:5
//!    |
//!  7 |     polcy: strict
//!    |     ^
//! caused by: tasks[0]: unknown field `polcy`
//! expected: one of `id`, `description`, `exec`, …
//! hint: did you mean `policy`?
//! ```
//!
//! Every such error is a usage error: the process exits with [`EXIT_USAGE`].

use std::fmt;
use std::path::PathBuf;

/// Exit code for invalid input: a bad flag, file or value.
pub const EXIT_USAGE: i32 = 2;

/// One problem with an input file, with everything needed to point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What failed, without the file: `invalid scenario`, `failed to read config`.
    pub title: String,
    /// The file, as the user named it.
    pub file: Option<PathBuf>,
    /// 1-based line in `file`.
    pub line: Option<usize>,
    /// 1-based column (in characters) in `file`.
    pub column: Option<usize>,
    /// Field path inside the document, such as `tasks[1].exec.args`.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What would have been accepted.
    pub expected: Option<String>,
    /// How to fix it.
    pub hint: Option<String>,
    /// The text of line `line`, shown with a caret under `column`.
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn new(title: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            file: None,
            line: None,
            column: None,
            path: None,
            message: message.into(),
            expected: None,
            hint: None,
            source_line: None,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        EXIT_USAGE
    }

    /// Sets `line`, `column` and `source_line` from a 1-based position in `text`.
    pub fn at(mut self, text: &str, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self.source_line = line.checked_sub(1).and_then(|i| text.lines().nth(i)).map(str::to_owned);
        self
    }

    /// The multi-line rendering (`Display`) with a final newline, ready for stderr.
    pub fn render(&self) -> String {
        format!("{self}\n")
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.title)?;
        if let Some(file) = &self.file {
            write!(f, " `{}`", file.display())?;
        }
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            let width = line.to_string().len();
            let pad = " ".repeat(width + 1);
            write!(f, "\n{pad}--> {}:{line}", file.display())?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
            if let Some(source) = &self.source_line {
                let gutter = " ".repeat(width + 2);
                write!(f, "\n{gutter}|")?;
                write!(f, "\n {line} | {}", expand_tabs(source).trim_end())?;
                if let Some(column) = self.column {
                    let before: String = source.chars().take(column.saturating_sub(1)).collect();
                    let caret_pad = " ".repeat(expand_tabs(&before).chars().count());
                    write!(f, "\n{gutter}| {caret_pad}^")?;
                }
            }
        }
        match &self.path {
            Some(path) if !path.is_empty() => write!(f, "\ncaused by: {path}: {}", self.message)?,
            _ => write!(f, "\ncaused by: {}", self.message)?,
        }
        if let Some(expected) = &self.expected {
            write!(f, "\nexpected: {expected}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

fn expand_tabs(s: &str) -> String {
    s.replace('\t', "    ")
}

/// Splits a serde message `X, expected Y` into `(X, Some(Y))`.
pub(crate) fn split_expected(message: &str) -> (String, Option<String>) {
    match message.split_once(", expected ") {
        Some((what, expected)) => (what.to_owned(), Some(expected.to_owned())),
        None => (message.to_owned(), None),
    }
}

/// The names between backticks in `s`: ``one of `a`, `b` `` → `[a, b]`.
pub(crate) fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&lower, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Diagnostic {
        Diagnostic {
            file: Some("examples/bad.yaml".into()),
            path: Some("tasks[0]".into()),
            expected: Some("one of `id`, `description`, `exec`".into()),
            hint: Some("did you mean `policy`?".into()),
            ..Diagnostic::new("invalid scenario", "unknown field `polcy`")
        }
        .at("a\nb\nc\nd\ne\nf\n    polcy: strict\n", 7, 5)
    }

    #[test]
    fn renders_the_house_format() {
        let want = "\
error: invalid scenario `examples/bad.yaml`
  --> examples/bad.yaml:7:5
   |
 7 |     polcy: strict
   |     ^
caused by: tasks[0]: unknown field `polcy`
expected: one of `id`, `description`, `exec`
hint: did you mean `policy`?";
        assert_eq!(full().to_string(), want);
        assert_eq!(full().render(), format!("{want}\n"));
        assert_eq!(full().exit_code(), 2);
    }

    #[test]
    fn renders_what_is_known() {
        let check = |d: Diagnostic, want: &str| assert_eq!(d.to_string(), want);
        check(
            Diagnostic::new("invalid config", "the file is empty"),
            "error: invalid config\ncaused by: the file is empty",
        );
        check(
            Diagnostic { file: Some("c.yaml".into()), ..Diagnostic::new("invalid config", "x") },
            "error: invalid config `c.yaml`\ncaused by: x",
        );
        check(
            Diagnostic { file: Some("c.yaml".into()), line: Some(12), ..Diagnostic::new("t", "x") },
            "error: t `c.yaml`\n   --> c.yaml:12\ncaused by: x",
        );
        // a wide line number widens the gutter; tabs are expanded under the caret too
        check(
            Diagnostic { file: Some("c.yaml".into()), ..Diagnostic::new("t", "x") }.at(
                &("-\n".repeat(9) + "\tkey: 1\n"),
                10,
                2,
            ),
            "error: t `c.yaml`\n   --> c.yaml:10:2\n    |\n 10 |     key: 1\n    |     ^\ncaused by: x",
        );
        check(
            Diagnostic { path: Some(String::new()), ..Diagnostic::new("t", "x") },
            "error: t\ncaused by: x",
        );
    }

    #[test]
    fn splits_serde_messages() {
        let check = |m: &str, what: &str, expected: Option<&str>| {
            assert_eq!(split_expected(m), (what.to_owned(), expected.map(str::to_owned)), "{m}");
        };
        check(
            "invalid type: string \"a\", expected a sequence",
            "invalid type: string \"a\"",
            Some("a sequence"),
        );
        check("unknown field `x`, expected `a` or `b`", "unknown field `x`", Some("`a` or `b`"));
        check("missing field `id`", "missing field `id`", None);
    }

    #[test]
    fn suggests_close_names() {
        let names = ["id", "description", "exec", "policy", "retries", "timeout"];
        let check = |w: &str, want: Option<&str>| assert_eq!(did_you_mean(w, &names), want, "{w}");
        check("polcy", Some("policy"));
        check("retires", Some("retries"));
        check("Timeout", Some("timeout"));
        check("exe", Some("exec"));
        check("zzz", None);
        check("command", None);
        assert_eq!(backticked("one of `a`, `b`"), ["a", "b"]);
    }
}
