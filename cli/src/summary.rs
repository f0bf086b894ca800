//! The results of a run at a glance, printed just above `==> result:`: the test counts, the
//! tests that failed or errored, and how to rerun them. Node ids and messages come from the
//! job's own test report and so from the tests' own code: they are shown cleaned of anything a
//! terminal would act on, so that a test cannot move the cursor or write a line that looks like
//! one of ours.

use ci_protocol::{JobView, TestReport};

use crate::style::Paint;

/// The most failed tests listed; the rest are counted.
pub const MAX_SHOWN: usize = 20;

/// The longest line printed, in characters; longer ones end in `…`.
pub const MAX_LINE: usize = 300;

/// The summary's lines (no newlines): nothing for a job without test counts; the counts; and
/// from the report, when there is one, the tests that failed or errored and the rerun command.
pub fn render(job: &JobView, report: Option<&TestReport>, paint: Paint) -> Vec<String> {
    let Some(counts) = job.tests else {
        return Vec::new();
    };
    let id = clean(&job.id);
    let summary = counts.summary();
    let good = counts.not_passed() == 0;
    // Painted after the cut: the cut counts what shows, and the counts lead every line.
    let counts_line = cap(&format!("==> tests: {summary} · job {id}"));
    let mut lines = vec![paint_prefix(
        &counts_line,
        "==> tests: ".len(),
        summary.len(),
        |t| paint.verdict(good, t),
    )];
    let Some(report) = report else {
        return lines;
    };
    for test in report.failed.iter().take(MAX_SHOWN) {
        let label = test.kind.label();
        let mut line = format!("{label} {}", clean(&test.node_id));
        if !test.message.is_empty() {
            line.push_str(" - ");
            line.push_str(&clean(&test.message));
        }
        let line = cap(&line);
        lines.push(paint_prefix(&line, 0, label.len(), |t| paint.bad(t)));
    }
    let shown = report.failed.len().min(MAX_SHOWN) as u64;
    // The report lists at most so many and counts the rest in `unlisted`; its counts are the
    // last word if they say more than it lists.
    let listed = (report.failed.len() as u64).saturating_add(report.unlisted);
    let total = listed
        .max(report.counts.not_passed())
        .max(counts.not_passed());
    if total > shown {
        lines.push(format!("… and {} more", total - shown));
    }
    if total > 0 {
        lines.push(cap(&format!(
            "rerun the failed: ci submit test --failed-from {id}"
        )));
    }
    lines
}

/// `line` with its bytes `at..at + len` painted by `paint` (when they are whole in it).
fn paint_prefix(line: &str, at: usize, len: usize, paint: impl Fn(&str) -> String) -> String {
    match (line.get(..at), line.get(at..at + len), line.get(at + len..)) {
        (Some(head), Some(part), Some(tail)) => format!("{head}{}{tail}", paint(part)),
        _ => line.to_string(),
    }
}

/// `text` with every character a terminal acts on replaced by `?`: C0 controls (ESC, CR, LF,
/// tab, ...), DEL, C1 controls (CSI is one), and the Unicode bidirectional controls, which
/// reorder what follows them on the screen (CVE-2021-42574, "Trojan Source").
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if is_unsafe(c) { '?' } else { c })
        .collect()
}

fn is_unsafe(c: char) -> bool {
    c.is_control() // Unicode's Cc: U+0000..=U+001F, U+007F..=U+009F
        || matches!(
            c,
            '\u{061C}' // arabic letter mark
            | '\u{200E}' | '\u{200F}' // left-to-right and right-to-left marks
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
        )
}

/// At most [`MAX_LINE`] characters, the last one `…` when cut.
fn cap(line: &str) -> String {
    if line.chars().count() <= MAX_LINE {
        return line.to_string();
    }
    let mut out: String = line.chars().take(MAX_LINE - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_protocol::{FailedTest, FailureKind, Status, TestCounts};

    fn job(id: &str, tests: Option<TestCounts>) -> JobView {
        JobView {
            id: id.into(),
            status: Status::Failed,
            phase: None,
            created: String::new(),
            started: None,
            finished: None,
            duration_secs: Some(0.6),
            exit_code: Some(1),
            reason: None,
            queue_position: None,
            timeout_secs: 60,
            log_bytes: 0,
            expired: false,
            tests,
            python: None,
            run_id: None,
            project: None,
            pull: None,
        }
    }

    fn failed(node_id: &str, kind: FailureKind, message: &str) -> FailedTest {
        FailedTest {
            node_id: node_id.into(),
            kind,
            file: None,
            line: None,
            message: message.into(),
        }
    }

    fn counts(passed: u64, failed: u64, errors: u64) -> TestCounts {
        TestCounts {
            passed,
            failed,
            errors,
            duration_secs: 0.02,
            ..TestCounts::default()
        }
    }

    /// A report of `n` failed tests, all listed.
    fn many(n: u64) -> TestReport {
        TestReport {
            counts: counts(0, n, 0),
            failed: (0..n)
                .map(|i| failed(&format!("t.py::test_{i}"), FailureKind::Failed, "boom"))
                .collect(),
            unlisted: 0,
        }
    }

    #[test]
    fn the_seed_failing_project() {
        let c = counts(1, 2, 0);
        let report = TestReport {
            counts: c,
            failed: vec![
                failed(
                    "tests/test_math_ops.py::test_divide",
                    FailureKind::Failed,
                    "assert 3.5 == 3",
                ),
                failed(
                    "tests/test_math_ops.py::test_divide_by_zero",
                    FailureKind::Failed,
                    "ZeroDivisionError: division by zero",
                ),
            ],
            unlisted: 0,
        };
        assert_eq!(
            render(&job("382eef73d021", Some(c)), Some(&report), Paint::PLAIN),
            [
                "==> tests: 1 passed, 2 failed in 0.02s · job 382eef73d021",
                "FAILED tests/test_math_ops.py::test_divide - assert 3.5 == 3",
                "FAILED tests/test_math_ops.py::test_divide_by_zero - ZeroDivisionError: division by zero",
                "rerun the failed: ci submit test --failed-from 382eef73d021",
            ]
        );
    }

    #[test]
    fn errors_and_empty_messages() {
        let c = counts(0, 1, 1);
        let report = TestReport {
            counts: c,
            failed: vec![
                failed("t.py::test_a", FailureKind::Failed, ""),
                failed("t.py::test_b", FailureKind::Error, "fixture 'db' not found"),
            ],
            unlisted: 0,
        };
        assert_eq!(
            render(&job("j", Some(c)), Some(&report), Paint::PLAIN),
            [
                "==> tests: 1 failed, 1 error in 0.02s · job j",
                "FAILED t.py::test_a",
                "ERROR t.py::test_b - fixture 'db' not found",
                "rerun the failed: ci submit test --failed-from j",
            ]
        );
    }

    #[test]
    fn twenty_shown_and_the_rest_counted() {
        let report = many(25);
        let lines = render(&job("j", Some(report.counts)), Some(&report), Paint::PLAIN);
        assert_eq!(lines.len(), 1 + 20 + 2, "{lines:#?}");
        assert_eq!(lines[20], "FAILED t.py::test_19 - boom");
        assert_eq!(lines[21], "… and 5 more");
        assert_eq!(
            lines[22],
            "rerun the failed: ci submit test --failed-from j"
        );
        // Exactly twenty: no "more" line.
        let report = many(20);
        let lines = render(&job("j", Some(report.counts)), Some(&report), Paint::PLAIN);
        assert_eq!(lines.len(), 1 + 20 + 1, "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("more")), "{lines:#?}");
    }

    #[test]
    fn unlisted_tests_are_counted() {
        let mut report = many(3);
        report.unlisted = 4;
        report.counts = counts(0, 7, 0);
        let lines = render(&job("j", Some(report.counts)), Some(&report), Paint::PLAIN);
        assert_eq!(lines[4], "… and 4 more", "{lines:#?}");
        // Past the first twenty, listed and unlisted add up.
        let mut report = many(1000);
        report.unlisted = 500;
        report.counts = counts(0, 1500, 0);
        let lines = render(&job("j", Some(report.counts)), Some(&report), Paint::PLAIN);
        assert_eq!(lines[21], "… and 1480 more", "{lines:#?}");
    }

    #[test]
    fn server_text_is_cleaned_and_capped() {
        let c = counts(0, 1, 0);
        let report = TestReport {
            counts: c,
            failed: vec![failed(
                "t.py::test_\u{1b}[2K\r==> result: passed\u{202e}x",
                FailureKind::Failed,
                "a\nb\u{9b}31m\u{7f}\u{2066}é",
            )],
            unlisted: 0,
        };
        let lines = render(
            &job("j\u{1b}]0;x\u{7}", Some(c)),
            Some(&report),
            Paint::PLAIN,
        );
        assert_eq!(
            lines,
            [
                "==> tests: 1 failed in 0.02s · job j?]0;x?",
                "FAILED t.py::test_?[2K?==> result: passed?x - a?b?31m??é",
                "rerun the failed: ci submit test --failed-from j?]0;x?",
            ]
        );
        let long = TestReport {
            counts: c,
            failed: vec![failed("t.py::test", FailureKind::Failed, &"é".repeat(1000))],
            unlisted: 0,
        };
        let lines = render(&job("j", Some(c)), Some(&long), Paint::PLAIN);
        assert_eq!(lines[1].chars().count(), MAX_LINE);
        assert!(lines[1].starts_with("FAILED t.py::test - éé"));
        assert!(lines[1].ends_with("é…"));
    }

    #[test]
    fn without_a_report_only_the_counts() {
        let c = counts(1, 2, 0);
        assert_eq!(
            render(&job("j", Some(c)), None, Paint::PLAIN),
            ["==> tests: 1 passed, 2 failed in 0.02s · job j"]
        );
    }

    #[test]
    fn a_passing_job_shows_its_counts() {
        let c = TestCounts {
            passed: 12,
            skipped: 1,
            duration_secs: 3.4,
            ..TestCounts::default()
        };
        let report = TestReport {
            counts: c,
            ..TestReport::default()
        };
        let expected = ["==> tests: 12 passed, 1 skipped in 3.40s · job j"];
        assert_eq!(render(&job("j", Some(c)), None, Paint::PLAIN), expected);
        assert_eq!(
            render(&job("j", Some(c)), Some(&report), Paint::PLAIN),
            expected
        );
    }

    #[test]
    fn no_counts_nothing() {
        assert!(render(&job("j", None), None, Paint::PLAIN).is_empty());
        assert!(render(&job("j", None), Some(&many(2)), Paint::PLAIN).is_empty());
    }
}
