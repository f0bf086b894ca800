//! The test report a job's pytest writes (JUnit XML, `--junitxml`), read by the server when the
//! test container has ended. For the verdict it is a second witness beside pytest's exit
//! status: a test process that exits 0 although its report lists failures did not pass.
//!
//! The file comes from the job, so it is read as hostile: bounded in size, streamed (no tree
//! kept), no entities expanded, numbers checked.

use std::io::BufRead;
use std::path::Path;

use quick_xml::events::{BytesStart, Event};

/// Largest report read; a bigger one is not trusted.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The writable directory of the test container that holds the report.
pub const DIR_IN_CONTAINER: &str = "/ci-report";

/// Where the report is written inside the test container.
pub const IN_CONTAINER: &str = "/ci-report/junit.xml";

/// The counts of a report, summed over its `<testsuite>` elements.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
}

impl Counts {
    /// Tests that failed or errored.
    pub fn failed(&self) -> u64 {
        self.failures.saturating_add(self.errors)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the test report is larger than {} MiB", MAX_REPORT_BYTES >> 20)]
    TooLarge,
    #[error("the test report is not valid JUnit XML: {0}")]
    Invalid(String),
    #[error("cannot read the test report: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the report at `path` without following a link and without blocking on a fifo:
/// `None` when there is none, an error when it is not a regular file.
pub fn open(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("the report is not a regular file"));
    }
    Ok(Some(file))
}

/// Reads the report at `path`: `None` when there is none.
pub fn read(path: &Path) -> Result<Option<ci_protocol::TestReport>, ReportError> {
    let Some(file) = open(path)? else {
        return Ok(None);
    };
    if file.metadata()?.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge);
    }
    use std::io::Read;
    let reader = std::io::BufReader::new(file.take(MAX_REPORT_BYTES));
    let c = parse(reader)?;
    Ok(Some(ci_protocol::TestReport {
        counts: ci_protocol::TestCounts {
            passed: c.tests.saturating_sub(c.failed()).saturating_sub(c.skipped),
            failed: c.failures,
            errors: c.errors,
            skipped: c.skipped,
            ..Default::default()
        },
        ..Default::default()
    }))
}

/// The counts of a JUnit XML document. The totals are the larger of what the `<testsuite>`
/// attributes say and how many `<failure>`/`<error>`/`<skipped>` elements there are, so a
/// report is never read as better than its own test cases.
pub fn parse(input: impl BufRead) -> Result<Counts, ReportError> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut declared = Counts::default();
    let mut seen = Counts::default();
    let mut suites = 0u64;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| ReportError::Invalid(e.to_string()))?;
        match event {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"testsuite" => {
                    suites += 1;
                    add_suite(&mut declared, &e)?;
                }
                b"testcase" => seen.tests += 1,
                b"failure" => seen.failures += 1,
                b"error" => seen.errors += 1,
                b"skipped" => seen.skipped += 1,
                _ => {}
            },
            Event::DocType(_) => {
                return Err(ReportError::Invalid("a DOCTYPE is not allowed".into()))
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if suites == 0 {
        return Err(ReportError::Invalid("no <testsuite> element".into()));
    }
    Ok(Counts {
        tests: declared.tests.max(seen.tests),
        failures: declared.failures.max(seen.failures),
        errors: declared.errors.max(seen.errors),
        skipped: declared.skipped.max(seen.skipped),
    })
}

fn add_suite(total: &mut Counts, suite: &BytesStart) -> Result<(), ReportError> {
    for attr in suite.attributes() {
        let attr = attr.map_err(|e| ReportError::Invalid(e.to_string()))?;
        let slot = match attr.key.local_name().as_ref() {
            b"tests" => &mut total.tests,
            b"failures" => &mut total.failures,
            b"errors" => &mut total.errors,
            b"skipped" => &mut total.skipped,
            _ => continue,
        };
        let n: u64 = std::str::from_utf8(&attr.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ReportError::Invalid(format!(
                    "<testsuite> attribute {} is not a count",
                    String::from_utf8_lossy(attr.key.as_ref())
                ))
            })?;
        *slot = slot.saturating_add(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3" time="0.031" timestamp="2026-12-01T04:00:00.000000" hostname="h"><testcase classname="tests.test_a" name="test_ok" time="0.001" /><testcase classname="tests.test_a" name="test_bad" time="0.001"><failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase><testcase classname="tests.test_a" name="test_skip" time="0.000"><skipped type="pytest.skip" message="later">skipped</skipped></testcase></testsuite></testsuites>"#;

    fn counts(xml: &str) -> Result<Counts, ReportError> {
        parse(xml.as_bytes())
    }

    #[test]
    fn reads_pytests_report() {
        let c = counts(PYTEST).unwrap();
        assert_eq!(
            c,
            Counts {
                tests: 3,
                failures: 1,
                errors: 0,
                skipped: 1
            }
        );
        assert_eq!(c.failed(), 1);
    }

    #[test]
    fn a_report_is_never_better_than_its_test_cases() {
        let forged = PYTEST.replace(r#"failures="1""#, r#"failures="0""#);
        assert_eq!(counts(&forged).unwrap().failures, 1);
    }

    #[test]
    fn hostile_reports_are_refused() {
        let entities = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><testsuite tests="1">&lol2;</testsuite>"#;
        assert!(matches!(counts(entities), Err(ReportError::Invalid(_))));
        assert!(matches!(
            counts(r#"<testsuite failures="-1"/>"#),
            Err(ReportError::Invalid(_))
        ));
        assert!(matches!(counts("<x/>"), Err(ReportError::Invalid(_))));
        assert!(matches!(
            counts(r#"<testsuite tests="1"><testcase>"#),
            Ok(_) | Err(ReportError::Invalid(_))
        ));
        assert!(matches!(
            counts("\u{0}garbage"),
            Err(ReportError::Invalid(_))
        ));
        // Deep nesting costs nothing: no tree is kept.
        let deep = format!(
            "<testsuite tests=\"1\">{}{}</testsuite>",
            "<a>".repeat(100_000),
            "</a>".repeat(100_000)
        );
        assert_eq!(counts(&deep).unwrap().tests, 1);
    }

    #[test]
    fn missing_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("none.xml")).unwrap().is_none());
        let big = dir.path().join("big.xml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_REPORT_BYTES + 1).unwrap();
        assert!(matches!(read(&big), Err(ReportError::TooLarge)));
        let ok = dir.path().join("ok.xml");
        std::fs::write(&ok, PYTEST).unwrap();
        assert_eq!(read(&ok).unwrap().unwrap().counts.passed, 1);
    }
}
