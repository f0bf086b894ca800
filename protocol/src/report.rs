//! A job's test report on the wire: the counts every job view carries once its tests ended
//! (`JobView::tests`), and the report itself (`GET /v1/jobs/{id}/report`) with the tests that
//! failed or errored, which `ci` prints at the end of a run and reruns with `--failed-from`.

use serde::{Deserialize, Serialize};

/// How many tests ended which way, and how long pytest took.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    pub skipped: u64,
    pub xfailed: u64,
    pub xpassed: u64,
    /// pytest's own time for the session, in seconds.
    pub duration_secs: f64,
}

impl TestCounts {
    /// Tests that failed or errored: what `--failed-from` reruns.
    pub fn not_passed(&self) -> u64 {
        self.failed.saturating_add(self.errors)
    }

    /// Tests that ran to a pass, fail or error (skipped and expected failures aside).
    pub fn ran(&self) -> u64 {
        self.passed
            .saturating_add(self.xpassed)
            .saturating_add(self.not_passed())
    }

    /// `12/14`: passed of those that ran, as `ci list` shows it.
    pub fn ratio(&self) -> String {
        format!(
            "{}/{}",
            self.passed.saturating_add(self.xpassed),
            self.ran()
        )
    }

    /// `12 passed, 2 failed, 1 skipped in 3.40s`, in pytest's words; counts of 0 are left out.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            (self.passed, "passed"),
            (self.failed, "failed"),
            (
                self.errors,
                if self.errors == 1 { "error" } else { "errors" },
            ),
            (self.skipped, "skipped"),
            (self.xfailed, "xfailed"),
            (self.xpassed, "xpassed"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, word)| format!("{n} {word}"))
        .collect();
        let counts = if parts.is_empty() {
            "no tests ran".to_string()
        } else {
            parts.join(", ")
        };
        format!("{counts} in {:.2}s", self.duration_secs)
    }
}

/// Whether a listed test failed (an assertion, an exception in the test) or errored (in a
/// fixture, set-up or tear-down, or while its module was collected).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Failed,
    Error,
}

impl FailureKind {
    /// `FAILED` or `ERROR`, as pytest's short summary says it.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Failed => "FAILED",
            FailureKind::Error => "ERROR",
        }
    }
}

/// One test that failed or errored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FailedTest {
    /// pytest's node id (`tests/test_a.py::TestX::test_y[1]`): what `--failed-from` reruns.
    pub node_id: String,
    pub kind: FailureKind,
    /// Where it failed, relative to the project, when the report says.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The first line of its message (`assert 3 == 4`), at most a couple of hundred characters.
    pub message: String,
}

/// A job's test report, read by the server from pytest's JUnit XML.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TestReport {
    pub counts: TestCounts,
    /// The tests that failed or errored, in the report's order; at most
    /// [`TestReport::MAX_LISTED`].
    pub failed: Vec<FailedTest>,
    /// Failed or errored tests past [`TestReport::MAX_LISTED`], counted but not listed.
    #[serde(default)]
    pub unlisted: u64,
}

impl TestReport {
    /// The most failed tests a report lists.
    pub const MAX_LISTED: usize = 1000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_in_pytests_words() {
        let counts = TestCounts {
            passed: 12,
            failed: 2,
            skipped: 1,
            duration_secs: 3.4,
            ..TestCounts::default()
        };
        assert_eq!(counts.summary(), "12 passed, 2 failed, 1 skipped in 3.40s");
        assert_eq!(counts.ratio(), "12/14");
        assert_eq!(counts.not_passed(), 2);
        let one_error = TestCounts {
            errors: 1,
            xfailed: 2,
            xpassed: 1,
            ..TestCounts::default()
        };
        assert_eq!(
            one_error.summary(),
            "1 error, 2 xfailed, 1 xpassed in 0.00s"
        );
        assert_eq!(one_error.ratio(), "1/2");
        assert_eq!(TestCounts::default().summary(), "no tests ran in 0.00s");
        assert_eq!(TestCounts::default().ratio(), "0/0");
    }

    #[test]
    fn report_field_names_are_stable() {
        let report = TestReport {
            counts: TestCounts {
                passed: 1,
                failed: 1,
                duration_secs: 0.5,
                ..TestCounts::default()
            },
            failed: vec![FailedTest {
                node_id: "tests/test_a.py::test_b".into(),
                kind: FailureKind::Failed,
                file: Some("tests/test_a.py".into()),
                line: Some(7),
                message: "assert 1 == 2".into(),
            }],
            unlisted: 0,
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"counts":{"passed":1,"failed":1,"errors":0,"skipped":0,"xfailed":0,"xpassed":0,"duration_secs":0.5},"failed":[{"node_id":"tests/test_a.py::test_b","kind":"failed","file":"tests/test_a.py","line":7,"message":"assert 1 == 2"}],"unlisted":0}"#
        );
        assert_eq!(FailureKind::Error.label(), "ERROR");
    }
}
