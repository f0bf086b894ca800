//! The test report a job's pytest writes (JUnit XML, `--junitxml`), read by the server when the
//! test container has ended: the counts, and each failed test with its node id, where it
//! failed and why, which `ci` prints at the end of a run and `--failed-from` reruns. For the
//! verdict it is a second witness beside pytest's exit status: a test process that exits 0
//! although its report lists failures did not pass.
//!
//! The file comes from the job, so it is read as hostile: bounded in size, streamed (no tree
//! kept), no entities expanded, numbers checked.

use std::io::BufRead;
use std::path::Path;

use ci_protocol::{FailedTest, FailureKind, TestReport};
use quick_xml::events::{BytesStart, Event};

use crate::jobfile::JobFile;

/// Largest report read; a bigger one is not trusted.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The writable directory of the test container that holds the report.
pub const DIR_IN_CONTAINER: &str = "/ci-report";

/// Where the report is written inside the test container.
pub const IN_CONTAINER: &str = "/ci-report/junit.xml";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the test report is larger than {} MiB", MAX_REPORT_BYTES >> 20)]
    TooLarge,
    #[error("the test report is not valid JUnit XML: {0}")]
    Invalid(String),
    #[error("cannot read the test report: {0}")]
    Io(#[from] std::io::Error),
}

/// Elements nested deeper than this make a report invalid (pytest's are 4 deep).
pub const MAX_DEPTH: usize = 64;

/// How much of a failure's text (its traceback) is kept while reading: the end, where the
/// crash location is.
const TEXT_TAIL: usize = 8 << 10;

/// Longest message kept of a failed test, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// Opens the report at `path` as a file the job wrote ([`crate::jobfile`]): `None` when there
/// is none, an error when it is not a regular file.
pub fn open(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    match crate::jobfile::open(path)? {
        JobFile::Missing => Ok(None),
        JobFile::NotRegular => Err(std::io::Error::other("the report is not a regular file")),
        JobFile::Regular(file) => Ok(Some(file)),
    }
}

/// Reads the report at `path`: `None` when there is none.
pub fn read(path: &Path) -> Result<Option<TestReport>, ReportError> {
    let Some(file) = open(path)? else {
        return Ok(None);
    };
    if file.metadata()?.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge);
    }
    use std::io::Read;
    let reader = std::io::BufReader::new(file.take(MAX_REPORT_BYTES));
    parse(reader).map(Some)
}

/// The time and number of tests per test file of a JUnit report (xunit1: each `<testcase>`
/// says its `file`), for balancing shards ([`crate::shards`]); test cases without a file
/// are left out. A test case's time is its own (set-up, call, tear-down), not what pytest
/// spends around it (collection, hooks, reporting), which on a suite of many fast tests is
/// most of the run: that rest, the suites' time less their cases', is spread over the tests,
/// so that a file's figure is what it costs the run. Missing: empty. Streamed and bounded
/// like [`read`]. Blocking.
pub fn file_durations(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, crate::shards::FileTime>, ReportError> {
    let mut times = std::collections::BTreeMap::new();
    let Some(file) = open(path)? else {
        return Ok(times);
    };
    use std::io::Read;
    let reader = std::io::BufReader::new(file.take(MAX_REPORT_BYTES));
    let mut reader = quick_xml::Reader::from_reader(reader);
    let mut buf = Vec::new();
    let seconds = |t: Option<String>| {
        t.and_then(|t| t.parse().ok())
            .filter(|t: &f64| t.is_finite() && *t >= 0.0)
            .unwrap_or(0.0)
    };
    let mut suites_secs = 0.0;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| ReportError::Invalid(e.to_string()))?;
        match event {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"testsuite" => {
                suites_secs += seconds(attr(&e, b"time")?);
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"testcase" => {
                let Some(file) = attr(&e, b"file")? else {
                    continue;
                };
                let secs = seconds(attr(&e, b"time")?);
                if times.len() >= crate::shards::MAX_FILES && !times.contains_key(&file) {
                    continue;
                }
                let entry: &mut crate::shards::FileTime = times.entry(file).or_default();
                entry.secs += secs;
                entry.tests += 1;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    let cases_secs: f64 = times.values().map(|t| t.secs).sum();
    let tests: u64 = times.values().map(|t| t.tests).sum();
    if tests > 0 && suites_secs > cases_secs {
        let per_test = (suites_secs - cases_secs) / tests as f64;
        for t in times.values_mut() {
            t.secs += per_test * t.tests as f64;
        }
    }
    Ok(times)
}

/// What the `<testsuite>` elements say of themselves.
#[derive(Default)]
struct Declared {
    failures: u64,
    errors: u64,
    /// pytest counts expected failures as skipped here.
    skipped: u64,
    time: f64,
}

/// A `<failure>` or `<error>` being read.
struct Problem {
    kind: FailureKind,
    message: String,
    /// The end of its text.
    tail: String,
}

/// A `<testcase>` being read.
#[derive(Default)]
struct Case {
    classname: String,
    name: String,
    file: Option<String>,
    /// pytest's line attribute: 0-based.
    line: Option<u32>,
    failure: Option<Problem>,
    error: Option<Problem>,
    skipped: bool,
    xfailed: bool,
}

/// The report of a JUnit XML document, as pytest writes it. Each `<testcase>` counts once
/// by what it holds (a failure, an error, both — a test that failed and then errored in its
/// tear-down, as pytest counts it —, a skip, an expected failure, or nothing: a pass). A
/// test that passed although marked `xfail` looks like a pass in pytest's report, so
/// `xpassed` stays 0 (a strict one is a failure there). The counts are never better than the
/// `<testsuite>` attributes say. Streamed: no tree is kept and every buffer is bounded.
pub fn parse(input: impl BufRead) -> Result<TestReport, ReportError> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut declared = Declared::default();
    let mut suites = 0u64;
    let mut depth = 0usize;
    let mut case: Option<Case> = None;
    let mut problem: Option<Problem> = None;
    let mut report = TestReport::default();
    let mut listed = std::collections::HashSet::new();
    let invalid = |e: &dyn std::fmt::Display| ReportError::Invalid(e.to_string());
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| invalid(&e))?;
        match event {
            Event::Start(_) | Event::Empty(_) => {
                let (e, empty) = match event {
                    Event::Start(e) => (e, false),
                    Event::Empty(e) => (e, true),
                    _ => unreachable!("matched above"),
                };
                if !empty {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(ReportError::Invalid(format!(
                            "nested deeper than {MAX_DEPTH} elements"
                        )));
                    }
                }
                match e.local_name().as_ref() {
                    b"testsuite" => {
                        suites += 1;
                        add_suite(&mut declared, &e)?;
                    }
                    b"testcase" => {
                        let started = start_case(&e)?;
                        if empty {
                            end_case(started, &mut report, &mut listed);
                        } else {
                            case = Some(started);
                        }
                    }
                    b"failure" | b"error" if case.is_some() => {
                        let kind = if e.local_name().as_ref() == b"failure" {
                            FailureKind::Failed
                        } else {
                            FailureKind::Error
                        };
                        let started = Problem {
                            kind,
                            message: attr(&e, b"message")?.unwrap_or_default(),
                            tail: String::new(),
                        };
                        if empty {
                            end_problem(started, case.as_mut());
                        } else {
                            problem = Some(started);
                        }
                    }
                    b"skipped" if case.is_some() => {
                        let xfail = attr(&e, b"type")?.as_deref() == Some("pytest.xfail");
                        if let Some(case) = case.as_mut() {
                            case.skipped = true;
                            case.xfailed |= xfail;
                        }
                    }
                    _ => {}
                }
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    b"failure" | b"error" => {
                        if let Some(done) = problem.take() {
                            end_problem(done, case.as_mut());
                        }
                    }
                    b"testcase" => {
                        if let Some(done) = case.take() {
                            end_case(done, &mut report, &mut listed);
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let Some(p) = problem.as_mut() {
                    push_tail(&mut p.tail, &t.xml10_content().map_err(|e| invalid(&e))?);
                }
            }
            Event::CData(t) => {
                if let Some(p) = problem.as_mut() {
                    push_tail(&mut p.tail, &t.decode().map_err(|e| invalid(&e))?);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| invalid(&e))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| invalid(&e))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| {
                                ReportError::Invalid(format!("unknown entity &{name};"))
                            })?
                            .to_string()
                    }
                };
                if let Some(p) = problem.as_mut() {
                    push_tail(&mut p.tail, &resolved);
                }
            }
            Event::DocType(_) => {
                return Err(ReportError::Invalid("a DOCTYPE is not allowed".into()))
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if depth != 0 || case.is_some() {
        return Err(ReportError::Invalid(
            "the report ends inside an element".into(),
        ));
    }
    if suites == 0 {
        return Err(ReportError::Invalid("no <testsuite> element".into()));
    }
    let counts = &mut report.counts;
    counts.failed = counts.failed.max(declared.failures);
    counts.errors = counts.errors.max(declared.errors);
    let skipped_seen = counts.skipped.saturating_add(counts.xfailed);
    counts.skipped = counts
        .skipped
        .saturating_add(declared.skipped.saturating_sub(skipped_seen));
    counts.duration_secs = declared.time;
    Ok(report)
}

/// An attribute's value, unescaped; `None` when the element lacks it.
fn attr(e: &BytesStart, name: &[u8]) -> Result<Option<String>, ReportError> {
    for a in e.attributes() {
        let a = a.map_err(|e| ReportError::Invalid(e.to_string()))?;
        if a.key.local_name().as_ref() == name {
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| ReportError::Invalid(e.to_string()))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

fn start_case(e: &BytesStart) -> Result<Case, ReportError> {
    Ok(Case {
        classname: attr(e, b"classname")?.unwrap_or_default(),
        name: attr(e, b"name")?.unwrap_or_default(),
        file: attr(e, b"file")?.filter(|f| !f.is_empty()),
        line: attr(e, b"line")?.and_then(|l| l.trim().parse().ok()),
        ..Case::default()
    })
}

/// Appends `text`, keeping the last [`TEXT_TAIL`] bytes (cut on a character boundary).
fn push_tail(tail: &mut String, text: &str) {
    if text.len() >= TEXT_TAIL {
        tail.clear();
        let mut from = text.len() - TEXT_TAIL;
        while !text.is_char_boundary(from) {
            from += 1;
        }
        tail.push_str(&text[from..]);
        return;
    }
    tail.push_str(text);
    if tail.len() > 2 * TEXT_TAIL {
        let mut from = tail.len() - TEXT_TAIL;
        while !tail.is_char_boundary(from) {
            from += 1;
        }
        tail.drain(..from);
    }
}

fn end_problem(done: Problem, case: Option<&mut Case>) {
    let Some(case) = case else { return };
    let slot = match done.kind {
        FailureKind::Failed => &mut case.failure,
        FailureKind::Error => &mut case.error,
    };
    if slot.is_none() {
        *slot = Some(done);
    }
}

fn end_case(case: Case, report: &mut TestReport, listed: &mut std::collections::HashSet<String>) {
    let counts = &mut report.counts;
    match (&case.failure, &case.error) {
        (None, None) if case.xfailed => counts.xfailed = counts.xfailed.saturating_add(1),
        (None, None) if case.skipped => counts.skipped = counts.skipped.saturating_add(1),
        (None, None) => counts.passed = counts.passed.saturating_add(1),
        (failure, error) => {
            if failure.is_some() {
                counts.failed = counts.failed.saturating_add(1);
            }
            if error.is_some() {
                counts.errors = counts.errors.saturating_add(1);
            }
        }
    }
    let Some(problem) = case.failure.as_ref().or(case.error.as_ref()) else {
        return;
    };
    let node_id = node_id(&case.classname, &case.name, case.file.as_deref());
    if listed.contains(&node_id) {
        return;
    }
    if report.failed.len() >= TestReport::MAX_LISTED {
        report.unlisted = report.unlisted.saturating_add(1);
        return;
    }
    let (file, line) = match crash_location(&problem.tail) {
        Some((file, line)) => (Some(file), Some(line)),
        None => (case.file.clone(), case.line.map(|l| l.saturating_add(1))),
    };
    listed.insert(node_id.clone());
    report.failed.push(FailedTest {
        node_id,
        kind: problem.kind,
        file,
        line,
        message: message(&problem.message, &problem.tail),
    });
}

/// pytest's node id from a test case's attributes: `tests/test_a.py::TestX::test_y[1]`.
fn node_id(classname: &str, name: &str, file: Option<&str>) -> String {
    // A module that could not be collected: no class, its dotted path as the name.
    if classname.is_empty() {
        return match file {
            Some(file) => file.to_string(),
            None => format!("{}.py", name.replace('.', "/")),
        };
    }
    let (path, classes) = match file {
        Some(file) => {
            let module = file.strip_suffix(".py").unwrap_or(file).replace('/', ".");
            (file.to_string(), classes_after(classname, &module))
        }
        // xunit2 says no file: the module is the dotted path up to the first class.
        None => {
            let parts: Vec<&str> = classname.split('.').collect();
            let first_class = parts
                .iter()
                .position(|p| p.starts_with("Test") && p.len() > 4)
                .unwrap_or(parts.len());
            let (module, classes) = parts.split_at(first_class.max(1));
            (format!("{}.py", module.join("/")), classes.join("::"))
        }
    };
    let mut id = path;
    if !classes.is_empty() {
        id.push_str("::");
        id.push_str(&classes);
    }
    id.push_str("::");
    id.push_str(name);
    id
}

/// The classes of `classname` after its `module` part, `::`-joined; a `--junitprefix`
/// before the module is dropped.
fn classes_after(classname: &str, module: &str) -> String {
    let at = if classname.starts_with(module) {
        Some(0)
    } else {
        classname.find(&format!(".{module}")).map(|i| i + 1)
    };
    match at {
        Some(at) => {
            let rest = &classname[at + module.len()..];
            if rest.is_empty() {
                return String::new();
            }
            match rest.strip_prefix('.') {
                Some(classes) => classes.replace('.', "::"),
                None => classname.replace('.', "::"),
            }
        }
        None => classname.replace('.', "::"),
    }
}

/// Where the test failed: the last line of the traceback that reads `path:line: ...` with a
/// path relative to the project (pytest's crash line, `tests/test_a.py:8: AssertionError`).
fn crash_location(text: &str) -> Option<(String, u32)> {
    text.lines().rev().find_map(|line| {
        let (path, rest) = line.split_once(':')?;
        if path.is_empty() || path.starts_with('/') || path.contains(char::is_whitespace) {
            return None;
        }
        let (number, after) = rest.split_once(':')?;
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        Some((path.to_string(), number.parse().ok()?))
    })
}

/// The first line of a failure's message; for a module that could not be collected (and
/// any failure without a message) the last `E ` line of its text, which says why.
fn message(attribute: &str, tail: &str) -> String {
    let first = attribute
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .filter(|l| *l != "collection failure");
    let said = first.map(str::to_string).or_else(|| {
        tail.lines()
            .rev()
            .find_map(|l| l.strip_prefix("E "))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    });
    let said = said.unwrap_or_else(|| attribute.trim().to_string());
    if said.chars().count() <= MAX_MESSAGE_CHARS {
        return said;
    }
    let mut cut: String = said.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn add_suite(total: &mut Declared, suite: &BytesStart) -> Result<(), ReportError> {
    for attr in suite.attributes() {
        let attr = attr.map_err(|e| ReportError::Invalid(e.to_string()))?;
        let value = std::str::from_utf8(&attr.value).unwrap_or("").trim();
        let slot = match attr.key.local_name().as_ref() {
            b"failures" => &mut total.failures,
            b"errors" => &mut total.errors,
            b"skipped" => &mut total.skipped,
            b"time" => {
                let time: f64 = value.parse().unwrap_or(0.0);
                if time.is_finite() && time >= 0.0 {
                    total.time += time;
                }
                continue;
            }
            _ => continue,
        };
        let n: u64 = value.parse().map_err(|_| {
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
    use ci_protocol::TestCounts;

    /// pytest 9's own report (`-o junit_family=xunit1 --continue-on-collection-errors`) of a
    /// project with passes, failures, set-up and tear-down errors, a skip, an xfail, a strict
    /// and a plain xpass, parameters, a class, and two modules that cannot be imported.
    const XUNIT1: &str = include_str!("testdata/pytest-xunit1.xml");
    /// The same run with pytest's default family, whose test cases say no file or line.
    const XUNIT2: &str = include_str!("testdata/pytest-xunit2.xml");

    fn report(xml: &str) -> Result<TestReport, ReportError> {
        parse(xml.as_bytes())
    }

    fn ids(report: &TestReport) -> Vec<&str> {
        report.failed.iter().map(|t| t.node_id.as_str()).collect()
    }

    const NODE_IDS: [&str; 8] = [
        "tests/sub/test_b.py",
        "tests/test_broken.py",
        "tests/test_a.py::test_bad",
        "tests/test_a.py::test_setup_error",
        "tests/test_a.py::test_fail_and_teardown",
        "tests/test_a.py::test_xpass_strict",
        "tests/test_a.py::test_param[2]",
        "tests/test_a.py::TestX::test_m",
    ];

    #[test]
    fn reads_pytests_report_as_pytest_counts_it() {
        let r = report(XUNIT1).unwrap();
        assert_eq!(
            r.counts,
            TestCounts {
                passed: 3,
                failed: 5,
                errors: 4,
                skipped: 1,
                xfailed: 1,
                xpassed: 0,
                duration_secs: 0.06,
            }
        );
        assert_eq!(r.unlisted, 0);
        assert_eq!(ids(&r), NODE_IDS);
        let shown: Vec<(FailureKind, Option<&str>, Option<u32>, &str)> = r
            .failed
            .iter()
            .map(|t| (t.kind, t.file.as_deref(), t.line, t.message.as_str()))
            .collect();
        let (failed, error) = (FailureKind::Failed, FailureKind::Error);
        let a = Some("tests/test_a.py");
        assert_eq!(
            shown,
            [
                (
                    error,
                    Some("tests/sub/test_b.py"),
                    Some(1),
                    "ModuleNotFoundError: No module named 'helper'"
                ),
                (
                    error,
                    Some("tests/test_broken.py"),
                    Some(1),
                    "ModuleNotFoundError: No module named 'nonexistent_module'"
                ),
                (failed, a, Some(8), "assert 3.5 == 3"),
                (
                    error,
                    a,
                    Some(12),
                    "failed on setup with \"RuntimeError: setup boom\""
                ),
                (failed, a, Some(23), "AssertionError: fails too"),
                // No traceback: where the test is defined (pytest's 0-based line + 1).
                (failed, a, Some(32), "[XPASS(strict)]"),
                (failed, a, Some(42), "assert 2 == 1"),
                (
                    failed,
                    a,
                    Some(46),
                    "AssertionError: assert {'a': 1} == {'a': 2}"
                ),
            ]
        );
    }

    #[test]
    fn node_ids_without_file_attributes_or_behind_a_prefix() {
        let r = report(XUNIT2).unwrap();
        assert_eq!(ids(&r), NODE_IDS);
        let mut counts = r.counts;
        counts.duration_secs = 0.06;
        assert_eq!(counts, report(XUNIT1).unwrap().counts);
        let prefixed = XUNIT1.replace(r#"classname="tests."#, r#"classname="ci.tests."#);
        assert_eq!(ids(&report(&prefixed).unwrap()), NODE_IDS);
    }

    #[test]
    fn a_report_is_never_better_than_its_suites_say() {
        let forged = XUNIT1
            .replace(r#"failures="5""#, r#"failures="9""#)
            .replace(r#"skipped="2""#, r#"skipped="4""#);
        let c = report(&forged).unwrap().counts;
        assert_eq!((c.failed, c.skipped, c.passed), (9, 3, 3));
    }

    #[test]
    fn past_a_thousand_failures_the_rest_are_counted() {
        let cases: String = (0..1500)
            .map(|i| format!(r#"<testcase classname="t" name="test_{i}" file="t.py"><failure message="no"/></testcase>"#))
            .collect();
        let r = report(&format!("<testsuite>{cases}</testsuite>")).unwrap();
        assert_eq!(r.counts.failed, 1500);
        assert_eq!(r.failed.len(), TestReport::MAX_LISTED);
        assert_eq!(r.unlisted, 500);
        assert_eq!(r.failed[999].node_id, "t.py::test_999");
    }

    #[test]
    fn messages_are_one_short_line() {
        let long = "x".repeat(5000);
        let xml = format!(
            r#"<testsuite><testcase classname="t" name="test_a" file="t.py"><failure message="{long}&#10;second"/></testcase></testsuite>"#
        );
        let message = &report(&xml).unwrap().failed[0].message;
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn a_huge_traceback_keeps_its_crash_location_and_costs_a_bounded_buffer() {
        let text = "frame\n".repeat(4 << 20);
        let xml = format!(
            r#"<testsuite><testcase classname="t" name="test_a" file="t.py" line="0"><failure message="boom">{text}t.py:7: AssertionError</failure></testcase></testsuite>"#
        );
        let r = report(&xml).unwrap();
        assert_eq!(
            (r.failed[0].file.as_deref(), r.failed[0].line),
            (Some("t.py"), Some(7))
        );
    }

    #[test]
    fn hostile_reports_are_refused() {
        let entities = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><testsuite tests="1">&lol2;</testsuite>"#;
        let refused = |xml: &str| matches!(report(xml), Err(ReportError::Invalid(_)));
        assert!(refused(entities));
        assert!(refused(
            r#"<testsuite><testcase name="a"><failure>&lol;</failure></testcase></testsuite>"#
        ));
        assert!(refused(r#"<testsuite failures="-1"/>"#));
        assert!(refused("<x/>"));
        assert!(refused(r#"<testsuite tests="1"><testcase>"#), "truncated");
        assert!(refused(&XUNIT1[..XUNIT1.len() / 2]), "truncated");
        assert!(refused("\u{0}garbage"));
        let deep = format!(
            "<testsuite tests=\"1\">{}{}</testsuite>",
            "<a>".repeat(100_000),
            "</a>".repeat(100_000)
        );
        match report(&deep) {
            Err(ReportError::Invalid(why)) => assert_eq!(why, "nested deeper than 64 elements"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_oversized_linked_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("none.xml")).unwrap().is_none());
        let big = dir.path().join("big.xml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_REPORT_BYTES + 1).unwrap();
        assert!(matches!(read(&big), Err(ReportError::TooLarge)));
        let ok = dir.path().join("ok.xml");
        std::fs::write(&ok, XUNIT1).unwrap();
        assert_eq!(read(&ok).unwrap().unwrap().counts.passed, 3);
        // The job writes the report: a link to a secret of the server's is not followed,
        // a fifo does not block the read.
        let link = dir.path().join("link.xml");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(matches!(read(&link), Err(ReportError::Io(_))));
        let fifo = dir.path().join("fifo.xml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(read(&fifo), Err(ReportError::Io(_))));
    }
}
