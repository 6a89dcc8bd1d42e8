//! Subject syntax and matching, with NATS semantics.
//!
//! A subject is non-empty tokens separated by `.`, with no whitespace. A pattern may also use
//! the wildcards `*` (exactly one token) and `>` (one or more trailing tokens, last only);
//! wildcards are whole tokens. Published subjects carry no wildcards. Pure: no I/O.

use crate::BusError;

/// Checks a subject a message is published to (no wildcards).
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    check(subject, false).map_err(|reason| invalid(subject, reason))
}

/// Checks a subscription pattern (wildcards allowed).
pub fn validate_pattern(pattern: &str) -> Result<(), BusError> {
    check(pattern, true).map_err(|reason| invalid(pattern, reason))
}

/// True when `subject` matches `pattern`. Both are assumed valid.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when some subject matches both patterns. Both are assumed valid.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            // `>` takes one or more tokens: the other side needs at least one left.
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn invalid(subject: &str, reason: &str) -> BusError {
    BusError::InvalidSubject { subject: subject.to_owned(), reason: reason.to_owned() }
}

fn check(subject: &str, wildcards: bool) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("empty subject");
    }
    if subject.chars().any(char::is_whitespace) {
        return Err("contains whitespace");
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err("empty token");
        }
        let wildcard = token == "*" || token == ">";
        if wildcard && !wildcards {
            return Err("wildcards are not allowed when publishing");
        }
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err("wildcards must be whole tokens");
        }
        if token == ">" && tokens.peek().is_some() {
            return Err("`>` must be the last token");
        }
    }
    Ok(())
}

/// Bucket names as JetStream object stores take them: `[A-Za-z0-9_-]+`. Keys: non-empty (any
/// bytes otherwise; the client base64-encodes them into subjects).
pub(crate) fn validate_object(bucket: &str, key: &str) -> Result<(), BusError> {
    if bucket.is_empty()
        || !bucket.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(BusError::Transport(format!(
            "invalid object-store bucket `{bucket}`: use letters, digits, `_` and `-` only"
        )));
    }
    if key.is_empty() {
        return Err(BusError::Transport(format!("empty object key in bucket `{bucket}`")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_subject(subject: &str, expect: Result<(), &str>) {
        let got = validate_subject(subject);
        match expect {
            Ok(()) => assert_eq!(got, Ok(()), "subject `{subject}`"),
            Err(reason) => assert_eq!(got, Err(invalid(subject, reason)), "subject `{subject}`"),
        }
    }

    fn check_pattern(pattern: &str, expect: Result<(), &str>) {
        let got = validate_pattern(pattern);
        match expect {
            Ok(()) => assert_eq!(got, Ok(()), "pattern `{pattern}`"),
            Err(reason) => assert_eq!(got, Err(invalid(pattern, reason)), "pattern `{pattern}`"),
        }
    }

    fn check_match(pattern: &str, subject: &str, expect: bool) {
        assert_eq!(validate_pattern(pattern), Ok(()), "pattern `{pattern}`");
        assert_eq!(validate_subject(subject), Ok(()), "subject `{subject}`");
        assert_eq!(matches(pattern, subject), expect, "`{pattern}` vs `{subject}`");
    }

    #[test]
    fn subjects() {
        check_subject("a", Ok(()));
        check_subject("a.b.c", Ok(()));
        check_subject("orchestra.task.run-1.t_3", Ok(()));
        check_subject("_INBOX.abc.1", Ok(()));
        check_subject("", Err("empty subject"));
        check_subject(".", Err("empty token"));
        check_subject("a.", Err("empty token"));
        check_subject(".a", Err("empty token"));
        check_subject("a..b", Err("empty token"));
        check_subject("a b", Err("contains whitespace"));
        check_subject("a.\tb", Err("contains whitespace"));
        check_subject("a\n", Err("contains whitespace"));
        check_subject("a.*", Err("wildcards are not allowed when publishing"));
        check_subject(">", Err("wildcards are not allowed when publishing"));
        check_subject("a.>", Err("wildcards are not allowed when publishing"));
        check_subject("a*", Err("wildcards must be whole tokens"));
        check_subject("a.b>", Err("wildcards must be whole tokens"));
    }

    #[test]
    fn patterns() {
        check_pattern("a", Ok(()));
        check_pattern("*", Ok(()));
        check_pattern(">", Ok(()));
        check_pattern("a.*.c", Ok(()));
        check_pattern("a.>", Ok(()));
        check_pattern("*.*.>", Ok(()));
        check_pattern("", Err("empty subject"));
        check_pattern("a..>", Err("empty token"));
        check_pattern("a.> ", Err("contains whitespace"));
        check_pattern(">.a", Err("`>` must be the last token"));
        check_pattern("a.>.>", Err("`>` must be the last token"));
        check_pattern("a.b*", Err("wildcards must be whole tokens"));
        check_pattern("a.**", Err("wildcards must be whole tokens"));
        check_pattern("a.>>", Err("wildcards must be whole tokens"));
    }

    #[test]
    fn matching() {
        check_match("a", "a", true);
        check_match("a.b", "a.b", true);
        check_match("a", "b", false);
        check_match("a", "a.b", false);
        check_match("a.b", "a", false);
        check_match("ab", "a", false);
        check_match("*", "a", true);
        check_match("*", "a.b", false);
        check_match("a.*", "a.b", true);
        check_match("a.*", "a", false);
        check_match("a.*", "a.b.c", false);
        check_match("a.*.c", "a.b.c", true);
        check_match("a.*.c", "a.b.d", false);
        check_match("*.*", "a.b", true);
        check_match(">", "a", true);
        check_match(">", "a.b.c", true);
        check_match("a.>", "a", false);
        check_match("a.>", "a.b", true);
        check_match("a.>", "a.b.c", true);
        check_match("a.>", "b.c", false);
        check_match("a.*.>", "a.b", false);
        check_match("a.*.>", "a.b.c", true);
        check_match("*.>", "a.b", true);
    }

    fn check_overlap(a: &str, b: &str, expect: bool) {
        assert_eq!(validate_pattern(a), Ok(()), "pattern `{a}`");
        assert_eq!(validate_pattern(b), Ok(()), "pattern `{b}`");
        assert_eq!(overlaps(a, b), expect, "`{a}` vs `{b}`");
        assert_eq!(overlaps(b, a), expect, "`{b}` vs `{a}`");
    }

    #[test]
    fn overlapping() {
        check_overlap("a", "a", true);
        check_overlap("a", "b", false);
        check_overlap("a.b", "a", false);
        check_overlap("*", "a", true);
        check_overlap("*", "a.b", false);
        check_overlap(">", "a.b.c", true);
        check_overlap(">", "*", true);
        check_overlap("a.>", "a", false);
        check_overlap("a.>", "a.b", true);
        check_overlap("a.>", "b.>", false);
        check_overlap("a.*", "*.b", true);
        check_overlap("a.*.c", "a.b.*", true);
        check_overlap("a.*.c", "a.b.d", false);
        check_overlap("a.*", "a.b.>", false);
        check_overlap("a.*.>", "a.b", false);
        check_overlap("a.*.>", "*.b.c.d", true);
        check_overlap("o.task.default", "o.task.gpu", false);
        check_overlap("o.task.>", "o.task.gpu", true);
    }
}
