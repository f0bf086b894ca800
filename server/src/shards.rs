//! A suite split across several test containers of one job (`--shards`).
//!
//! Every shard runs pytest over the whole upload with the same arguments, so the suite is
//! collected exactly as pytest would collect it (its `testpaths`, `python_files`,
//! conftests, plugins); a small plugin ([`PLUGIN`]) then keeps the shard's share of the test
//! files and deselects the rest. The share is decided the same way in every shard: files by
//! their recorded duration, longest first, each to the least loaded shard; a file with no
//! record counts its tests at the average time per test of the recorded ones (or 1 each when
//! there is no record); a file heavier than a quarter of a shard's share is cut into runs of
//! consecutive tests (its module fixtures then run in each shard that has some of it). The
//! records are the durations per file of the project's last report ([`Durations`]), per
//! user and project.
//!
//! What comes out reads like one run: the first shard's output is the live log, the others'
//! follow it when they end, each under a header; their JUnit reports are merged into one
//! ([`merge_junit`]) that the report is read from.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The plugin's module name (`-p ci_shard`).
pub const PLUGIN_MODULE: &str = "ci_shard";

/// Where a shard sees the plugin and the durations, read-only.
pub const DIR_IN_CONTAINER: &str = "/opt/ci-shard";

/// `INDEX/COUNT` (1-based) of the shard, for the plugin.
pub const SHARD_ENV: &str = "CI_SHARD";

/// The durations file, for the plugin.
pub const DURATIONS_ENV: &str = "CI_SHARD_DURATIONS";

/// The plugin: keeps the shard's files, deselects the others.
pub const PLUGIN: &str = r#""""ci's shards: keep this shard's share of the tests (see ci-server's shards.rs)."""
import json
import math
import os


def pytest_collection_modifyitems(session, config, items):
    index, count = (int(n) for n in os.environ["CI_SHARD"].split("/"))
    try:
        with open(os.environ["CI_SHARD_DURATIONS"]) as f:
            known = json.load(f)
    except (OSError, ValueError, KeyError):
        known = {}
    files = {}
    for item in items:
        files.setdefault(item.location[0], []).append(item)
    # Every shard must cut the same way whatever order its plugins left the items in.
    for its in files.values():
        its.sort(key=lambda item: item.nodeid)
    secs = sum(known[f]["secs"] for f in files if f in known)
    tests = sum(known[f]["tests"] for f in files if f in known)
    per_test = secs / tests if tests else 1.0
    weight = {
        f: known[f]["secs"] if f in known else len(its) * per_test for f, its in files.items()
    }
    # Whole files, but a file heavier than a quarter of a shard's share is cut into runs of
    # consecutive tests, or one file would make its shard the last to end.
    piece = sum(weight.values()) / count / 4
    units = []
    for f, its in files.items():
        cuts = min(len(its), math.ceil(weight[f] / piece)) if piece > 0 else 1
        for c in range(max(cuts, 1)):
            part = its[c * len(its) // cuts : (c + 1) * len(its) // cuts] if cuts > 1 else its
            units.append((weight[f] * len(part) / len(its), f"{f}#{c:06d}", part))
    loads = [0.0] * count
    kept = []
    for w, _, part in sorted(units, key=lambda u: (-u[0], u[1])):
        shard = min(range(count), key=lambda s: (loads[s], s))
        loads[shard] += w
        if shard == index - 1:
            kept.extend(part)
    mine = set(map(id, kept))
    dropped = [item for item in items if id(item) not in mine]
    # What the server checks: together the shards kept every test collected, once.
    try:
        with open(os.environ["CI_SHARD_COUNTS"], "w") as f:
            json.dump({"collected": len(items), "kept": len(kept)}, f)
    except OSError:
        pass
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if id(item) in mine]
"#;

/// Where a shard's plugin writes how many tests were collected and how many it kept.
pub const COUNTS_ENV: &str = "CI_SHARD_COUNTS";

/// The counts file's name, in the shard's report directory.
pub const COUNTS_FILE: &str = "shard.json";

/// What a shard's plugin says it collected and kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Counts {
    pub collected: u64,
    pub kept: u64,
}

/// Checks that the shards together kept every collected test once: they all collected the
/// same tests and their shares add up. `Err` says why not, for the job's reason: a split
/// that lost a test must never read as a pass. Blocking.
pub fn check_counts(files: &[PathBuf]) -> Result<(), String> {
    let mut counts = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let read = open_report(path)
            .ok()
            .flatten()
            .and_then(|f| serde_json::from_reader::<_, Counts>(f.take(4096)).ok());
        match read {
            Some(c) => counts.push(c),
            None => return Err(format!("shard {} did not say which tests it ran", i + 1)),
        }
    }
    let collected = counts.first().map_or(0, |c| c.collected);
    let kept: u64 = counts.iter().map(|c| c.kept).sum();
    if counts.iter().any(|c| c.collected != collected) || kept != collected {
        let each: Vec<String> = counts
            .iter()
            .map(|c| format!("{} of {}", c.kept, c.collected))
            .collect();
        return Err(format!(
            "the shards did not split the suite exactly (each kept {}): the tests' collection differs between runs",
            each.join(", ")
        ));
    }
    Ok(())
}

/// What a run of the project took per test file: seconds and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileTime {
    pub secs: f64,
    pub tests: u64,
}

/// The durations per test file of a user's project, kept beside the caches:
/// `<cache>/durations/<user>/<key>.json`, the key from the project's name (or `-` for a
/// project without one). At most [`MAX_FILES`] files per record and [`MAX_PROJECTS`]
/// records per user (the oldest go).
pub struct Durations {
    path: PathBuf,
}

/// The most files a record keeps (the longest).
pub const MAX_FILES: usize = 20_000;

/// The most records a user has.
pub const MAX_PROJECTS: usize = 100;

impl Durations {
    pub fn of(cache_dir: &Path, user: &str, project: Option<&str>) -> Durations {
        use sha2::{Digest, Sha256};
        let key = hex::encode(&Sha256::digest(project.unwrap_or("-").as_bytes())[..12]);
        Durations {
            path: cache_dir
                .join("durations")
                .join(user)
                .join(format!("{key}.json")),
        }
    }

    /// The record; empty when there is none or it cannot be read. Blocking.
    pub fn load(&self) -> BTreeMap<String, FileTime> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Updates the record with a run's times: the files it ran replace theirs, the others
    /// stay (a run of a few tests keeps the rest). Blocking.
    pub fn update(&self, ran: BTreeMap<String, FileTime>) -> io::Result<()> {
        if ran.is_empty() {
            return Ok(());
        }
        let mut all = self.load();
        all.extend(ran);
        if all.len() > MAX_FILES {
            let mut by_time: Vec<_> = all.into_iter().collect();
            by_time.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs));
            by_time.truncate(MAX_FILES);
            all = by_time.into_iter().collect();
        }
        let dir = self.path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&all)?)?;
        std::fs::rename(&tmp, &self.path)?;
        prune(dir);
        Ok(())
    }
}

/// Keeps the newest [`MAX_PROJECTS`] records of a user.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut records: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if records.len() <= MAX_PROJECTS {
        return;
    }
    records.sort();
    for (_, path) in &records[..records.len() - MAX_PROJECTS] {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes one JUnit document with the test suites of every shard's report, in shard order.
/// A shard without a report adds nothing. Each part is read up to `max_bytes`; past that
/// the merged file is cut there too, and reading it then fails as any oversized report does.
/// Blocking.
pub fn merge_junit(parts: &[PathBuf], out: &Path, max_bytes: u64) -> io::Result<()> {
    let mut merged = std::fs::File::create(out)?;
    merged.write_all(b"<?xml version=\"1.0\" encoding=\"utf-8\"?><testsuites>")?;
    for part in parts {
        let Some(file) = open_report(part)? else {
            continue;
        };
        let mut text = String::new();
        file.take(max_bytes + 1).read_to_string(&mut text)?;
        merged.write_all(suites_of(&text).as_bytes())?;
    }
    merged.write_all(b"</testsuites>")?;
    Ok(())
}

/// A report file a shard wrote, opened as hostile (no link followed, no fifo waited on).
fn open_report(path: &Path) -> io::Result<Option<std::fs::File>> {
    match crate::jobfile::open(path)? {
        crate::jobfile::JobFile::Regular(file) => Ok(Some(file)),
        _ => Ok(None),
    }
}

/// The `<testsuite>` elements of a pytest JUnit document: what is inside its root
/// `<testsuites>`, or the document itself after its XML declaration when the root is a
/// lone `<testsuite>`.
fn suites_of(text: &str) -> &str {
    let mut body = text.trim_start();
    if body.starts_with("<?xml") {
        body = body.find("?>").map_or("", |end| &body[end + 2..]);
    }
    let body = body.trim();
    if body.starts_with("<testsuites") {
        let Some(open_end) = body.find('>') else {
            return "";
        };
        let inner = &body[open_end + 1..];
        return inner.strip_suffix("</testsuites>").unwrap_or(inner);
    }
    body
}

/// How a job's shards ended, as one pytest exit code: a shard that ran no test (every file
/// was another's: pytest's 5) does not count against the others; an error (2–4, or any
/// other code) wins over a failure (1), a failure over a pass.
pub fn combined_exit(codes: &[i32]) -> i32 {
    if let Some(other) = codes.iter().find(|c| !matches!(c, 0 | 1 | 5)) {
        return *other;
    }
    if codes.contains(&1) {
        1
    } else if codes.contains(&0) {
        0
    } else {
        5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_combine_worst_first_and_an_empty_shard_does_not_count() {
        assert_eq!(combined_exit(&[0, 0]), 0);
        assert_eq!(combined_exit(&[0, 5]), 0);
        assert_eq!(combined_exit(&[1, 0]), 1);
        assert_eq!(combined_exit(&[5, 1]), 1);
        assert_eq!(combined_exit(&[1, 2]), 2);
        assert_eq!(combined_exit(&[0, 137]), 137);
        assert_eq!(combined_exit(&[5, 5]), 5);
    }

    #[test]
    fn the_shards_must_keep_every_collected_test_once() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            path
        };
        let a = write("a", r#"{"collected": 10, "kept": 6}"#);
        let b = write("b", r#"{"collected": 10, "kept": 4}"#);
        assert_eq!(check_counts(&[a.clone(), b.clone()]), Ok(()));
        // A test in no shard, or in two, or shards that collected differently.
        let short = write("c", r#"{"collected": 10, "kept": 3}"#);
        let other = write("d", r#"{"collected": 11, "kept": 4}"#);
        for files in [[a.clone(), short], [a.clone(), other]] {
            let err = check_counts(&files).unwrap_err();
            assert!(err.contains("did not split the suite exactly"), "{err}");
        }
        let err = check_counts(&[a, dir.path().join("missing")]).unwrap_err();
        assert_eq!(err, "shard 2 did not say which tests it ran");
        let _ = b;
    }

    #[test]
    fn junit_reports_merge_into_one_document_read_as_one_report() {
        let dir = tempfile::tempdir().unwrap();
        let shard = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            path
        };
        let one = shard(
            "1.xml",
            r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" tests="2" time="1.5"><testcase classname="tests.test_a" name="test_x" file="tests/test_a.py" line="1" time="0.5"/><testcase classname="tests.test_a" name="test_y" file="tests/test_a.py" line="4" time="1.0"><failure message="assert 1 == 2">boom</failure></testcase></testsuite></testsuites>"#,
        );
        let two = shard(
            "2.xml",
            r#"<?xml version="1.0" encoding="utf-8"?>
<testsuite name="pytest" errors="0" failures="0" skipped="1" tests="2" time="0.7"><testcase classname="tests.test_b" name="test_z" file="tests/test_b.py" line="0" time="0.2"/><testcase classname="tests.test_b" name="test_s" file="tests/test_b.py" line="3" time="0.0"><skipped message="no"/></testcase></testsuite>"#,
        );
        let out = dir.path().join("junit.xml");
        let missing = dir.path().join("none.xml");
        merge_junit(&[one, missing, two], &out, 1 << 20).unwrap();
        let report = crate::report::read(&out).unwrap().unwrap();
        assert_eq!(report.counts.passed, 2);
        assert_eq!(report.counts.failed, 1);
        assert_eq!(report.counts.skipped, 1);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].node_id, "tests/test_a.py::test_y");

        // The suites took 2.2 s, their cases 1.7 s: the other 0.5 s is spread over the four
        // tests.
        let times = crate::report::file_durations(&out).unwrap();
        assert_eq!(times["tests/test_a.py"].tests, 2);
        assert!(
            (times["tests/test_a.py"].secs - 1.75).abs() < 1e-9,
            "{times:?}"
        );
        assert_eq!(times["tests/test_b.py"].tests, 2);
        assert!(
            (times["tests/test_b.py"].secs - 0.45).abs() < 1e-9,
            "{times:?}"
        );
    }

    #[test]
    fn durations_are_kept_per_user_and_project_and_updated_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let record = Durations::of(dir.path(), "alice", Some("pkg"));
        assert!(record.load().is_empty());
        let t = |secs: f64, tests: u64| FileTime { secs, tests };
        record
            .update(BTreeMap::from([
                ("tests/test_a.py".to_string(), t(2.0, 4)),
                ("tests/test_b.py".to_string(), t(1.0, 1)),
            ]))
            .unwrap();
        record
            .update(BTreeMap::from([("tests/test_a.py".to_string(), t(3.0, 5))]))
            .unwrap();
        let got = record.load();
        assert_eq!(got["tests/test_a.py"], t(3.0, 5));
        assert_eq!(got["tests/test_b.py"], t(1.0, 1));
        assert!(Durations::of(dir.path(), "bob", Some("pkg"))
            .load()
            .is_empty());
        assert!(Durations::of(dir.path(), "alice", None).load().is_empty());
    }
}
