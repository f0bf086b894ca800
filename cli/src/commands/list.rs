//! `ci list`: the caller's jobs, newest first.

use ci_protocol::{JobView, ListQuery, Status};

use crate::client::Client;
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON (an array of jobs with stable field names) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show at most this many jobs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only jobs with this status (queued, running, passed, failed, error, timed_out, cancelled, lost).
    #[arg(long)]
    pub status: Option<Status>,
    /// Only jobs of this project (the name of the directory `ci submit` packed).
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
}

pub async fn run(client: &Client, args: ListArgs) -> anyhow::Result<u8> {
    let query = ListQuery {
        project: args.project.clone(),
        ..ListQuery::new(args.limit, args.status)
    };
    // As JSON, as the server sent it: fields this `ci` does not know yet are kept.
    let jobs: Vec<serde_json::Value> = client.get_json_with("/v1/jobs", &query).await?;
    // A server older than projects ignores `project=`: filtered here as well.
    let jobs: Vec<serde_json::Value> = match &args.project {
        Some(name) => jobs
            .into_iter()
            .filter(|j| j.get("project").and_then(|p| p.as_str()) == Some(name.as_str()))
            .collect(),
        None => jobs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        let jobs: Vec<JobView> = jobs
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("the server sent a bad answer: {e}"))?;
        print!(
            "{}",
            table(
                &jobs,
                crate::style::Paint::stdout(),
                crate::table::stdout_width()
            )
        );
    }
    Ok(exit::SUCCESS)
}

/// The columns of free text, cut to fit the terminal: PROJECT and RESULT.
const SHRINK: [usize; 2] = [1, 10];

pub(crate) fn table(jobs: &[JobView], paint: crate::style::Paint, width: Option<usize>) -> String {
    let header = [
        "ID", "PROJECT", "PYTHON", "STATUS", "TESTS", "PHASE", "CREATED", "STARTED", "FINISHED",
        "DURATION", "RESULT",
    ];
    let rows: Vec<[String; 11]> = jobs
        .iter()
        .map(|j| {
            let phase = j
                .phase
                .map(|p| p.as_str().replace('_', " "))
                .unwrap_or_else(|| "-".into());
            let phase = match j.queue_position {
                Some(p) => format!("position {p}"),
                None => phase,
            };
            let result = match (&j.reason, j.exit_code) {
                (Some(r), _) => crate::summary::clean(r),
                (None, Some(c)) => format!("exit {c}"),
                _ => "-".into(),
            };
            let status = paint.status(j.status, j.status.as_str());
            let status = if j.expired {
                format!("{status} (expired)")
            } else {
                status
            };
            [
                crate::summary::clean(&j.id),
                j.project
                    .as_deref()
                    .map_or("-".into(), crate::summary::clean),
                j.python
                    .as_deref()
                    .map_or("-".into(), crate::summary::clean),
                status,
                // Passed of those that ran; `-` before the tests end, or when they left no
                // report.
                j.tests.map_or("-".into(), |t| t.ratio()),
                phase,
                crate::table::short_time(Some(&j.created)),
                // The time of day alone on the day the job was created: the column the Python
                // takes is paid for by these two.
                crate::table::clock_after(j.started.as_deref(), &j.created),
                crate::table::clock_after(j.finished.as_deref(), &j.created),
                j.duration_secs.map_or("-".into(), |d| format!("{d:.1}s")),
                result,
            ]
        })
        .collect();
    let fit = |hidden: &[usize]| {
        let keep = |c: &usize| !hidden.contains(c);
        let header: Vec<&str> = (0..header.len()).filter(keep).map(|c| header[c]).collect();
        let rows = rows.iter().map(|row| {
            (0..row.len())
                .filter(keep)
                .map(|c| row[c].clone())
                .collect()
        });
        // The free-text columns keep their place among those left.
        let shrink: Vec<usize> = SHRINK
            .iter()
            .map(|&c| c - hidden.iter().filter(|&&h| h < c).count())
            .collect();
        crate::table::render_fit(&header, rows, width, &shrink)
    };
    let mut table = fit(&[]);
    if let Some(width) = width {
        // Still too wide with the free text cut: the columns the others imply go, the start
        // and end times (CREATED and DURATION stay), then the phase.
        for hidden in NARROW {
            if table.lines().all(|l| crate::style::width(l) <= width) {
                break;
            }
            table = fit(hidden);
        }
    }
    table
}

/// The columns hidden, in turn, from a terminal too narrow for the table: STARTED and
/// FINISHED, then PHASE too.
const NARROW: [&[usize]; 2] = [&[7, 8], &[5, 7, 8]];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::style::Paint;

    fn job() -> JobView {
        serde_json::from_value(serde_json::json!({
            "id": "abc", "status": "passed", "phase": null, "created": "2026-11-21T10:50:54Z",
            "started": null, "finished": null, "duration_secs": 1.0, "exit_code": 0,
            "reason": null, "queue_position": null, "log_bytes": 0
        }))
        .unwrap()
    }

    #[test]
    fn an_expired_job_says_so_in_its_status() {
        let expired = JobView {
            expired: true,
            ..job()
        };
        let shown = table(&[expired, job()], Paint::PLAIN, None);
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines[1].contains("  passed (expired)  "), "{shown}");
        assert!(lines[2].contains("  passed  "), "{shown}");
        assert!(!lines[2].contains("expired"), "{shown}");
    }

    #[test]
    fn tests_column_after_status() {
        let failed = JobView {
            id: "def".into(),
            status: Status::Failed,
            exit_code: Some(1),
            tests: Some(ci_protocol::TestCounts {
                passed: 1,
                failed: 2,
                skipped: 4,
                duration_secs: 0.02,
                ..Default::default()
            }),
            ..job()
        };
        assert_eq!(
            table(&[failed, job()], Paint::PLAIN, None),
            "ID   PROJECT  PYTHON  STATUS  TESTS  PHASE  CREATED              STARTED  FINISHED  DURATION  RESULT\n\
             def  -        -       failed  1/3    -      2026-11-21 10:50:54  -        -         1.0s      exit 1\n\
             abc  -        -       passed  -      -      2026-11-21 10:50:54  -        -         1.0s      exit 0\n"
        );
    }

    #[test]
    fn a_narrow_terminal_hides_the_times_the_others_imply_then_the_phase() {
        let ran = JobView {
            id: "0a1b2c3d4e5f".into(),
            project: Some("a-project-with-a-long-name".into()),
            python: Some("3.13".into()),
            started: Some("2026-11-21T10:50:55.5Z".into()),
            finished: Some("2026-11-21T10:51:03Z".into()),
            reason: Some("a reason long enough to be cut".into()),
            ..job()
        };
        let header = |width| {
            let shown = table(std::slice::from_ref(&ran), Paint::PLAIN, Some(width));
            shown.lines().next().unwrap().to_string()
        };
        let full = table(std::slice::from_ref(&ran), Paint::PLAIN, None);
        assert!(full.lines().all(|l| l.len() > 120), "{full}");
        // Cut first, then hidden: STARTED and FINISHED, then PHASE.
        assert!(header(120).contains("STARTED"), "{}", header(120));
        assert!(!header(100).contains("STARTED"), "{}", header(100));
        assert!(header(100).contains("PHASE"), "{}", header(100));
        assert!(!header(90).contains("PHASE"), "{}", header(90));
        for width in [120, 100, 90] {
            let shown = table(std::slice::from_ref(&ran), Paint::PLAIN, Some(width));
            assert!(shown.lines().all(|l| l.chars().count() <= width), "{shown}");
        }
    }

    #[test]
    fn the_python_column_costs_no_width() {
        let ran = JobView {
            id: "0a1b2c3d4e5f".into(),
            python: Some("3.13".into()),
            started: Some("2026-11-21T10:50:55.5Z".into()),
            finished: Some("2026-11-21T10:51:03Z".into()),
            ..job()
        };
        let next_day = JobView {
            python: None,
            finished: Some("2026-11-22T00:00:01Z".into()),
            ..ran.clone()
        };
        let shown = table(&[ran, next_day], Paint::PLAIN, None);
        assert_eq!(
            shown,
            "ID            PROJECT  PYTHON  STATUS  TESTS  PHASE  CREATED              STARTED   FINISHED             DURATION  RESULT\n\
             0a1b2c3d4e5f  -        3.13    passed  -      -      2026-11-21 10:50:54  10:50:55  10:51:03             1.0s      exit 0\n\
             0a1b2c3d4e5f  -        -       passed  -      -      2026-11-21 10:50:54  10:50:55  2026-11-22 00:00:01  1.0s      exit 0\n"
        );
        // Before the PYTHON column, with every time in full (the e2e snapshot `list`); the
        // PROJECT column set apart.
        let before = "0a1b2c3d4e5f  passed  -      -      2026-11-21 10:50:54  2026-11-21 10:50:55  2026-11-21 10:51:03  1.0s      exit 0";
        let project = "-        ".len();
        assert!(
            shown.lines().nth(1).unwrap().len() - project < before.len(),
            "{shown}"
        );
    }
}
