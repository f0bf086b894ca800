//! The cluster's queue and logs measured in one process, against PostgreSQL on loopback
//! (`scripts/bench cluster` runs it; the kill -9 takeover is measured there, with real
//! processes).
//!
//!   cargo run --release --example cluster_bench -p ci-server -- \
//!       [--database-url URL] [--jobs N] [--workers 1,2] [--log-secs S] [--log-every-ms MS]
//!
//! Without `--database-url` it starts its own PostgreSQL (`ci_e2e::postgres::TestPostgres`:
//! Debian's server, loopback, no fsync, as the `postgres` user when root) and takes a fresh
//! database for each measurement; with one, it uses that database as it is (it must be
//! empty of queued jobs: every queued job is claimed and finished).
//!
//! 1. Throughput: N jobs with a tiny upload are submitted through
//!    [`SharedQueue::submit_with_upload`], then W worker loops, each a node of its own (own
//!    [`Pg`] pool, own node name, own tokio task), do what a worker does with a job whose
//!    containers take no time: `claim` → `upload_to` → `apply_as(Phase(Testing))` →
//!    `apply_as(Finish{Passed})`, until the queue is empty. Jobs claimed and finished per
//!    second, for each W. Not the job manager (`Jobs`): only the queue's statements.
//! 2. Log latency: a writer on node n1 (`PgLogs::open_live` on one pool, which spools and
//!    ships to the database) appends a line with its time every MS for S seconds; a follower
//!    on "another api node" (`PgLogs::stream` on a second pool, `LISTEN ci_log`) notes when
//!    each line arrives. One process, one monotonic clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ci_server::lifecycle::{Transition, Verdict};
use ci_server::logs::LogStore;
use ci_server::model::{now_ms, Job, Phase};
use ci_server::pg::logs::PgLogs;
use ci_server::pg::Pg;
use ci_server::queue::UserCaps;
use ci_server::store::SharedQueue;
use futures_util::StreamExt;

const CAPS: UserCaps = UserCaps {
    queued: usize::MAX,
    queued_bytes: u64::MAX,
    running: usize::MAX,
};

/// Owners the jobs are spread over (the claim orders by each owner's running jobs).
const OWNERS: usize = 4;

struct Args {
    database_url: Option<String>,
    jobs: usize,
    workers: Vec<usize>,
    log_secs: f64,
    log_every: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        database_url: None,
        jobs: 500,
        workers: vec![1, 2],
        log_secs: 10.0,
        log_every: Duration::from_millis(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--database-url" => args.database_url = Some(value()),
            "--jobs" => args.jobs = value().parse().unwrap_or_else(|_| usage("--jobs N")),
            "--workers" => {
                args.workers = value()
                    .split(',')
                    .map(|w| w.parse().unwrap_or_else(|_| usage("--workers 1,2")))
                    .collect()
            }
            "--log-secs" => {
                args.log_secs = value().parse().unwrap_or_else(|_| usage("--log-secs S"))
            }
            "--log-every-ms" => {
                args.log_every = Duration::from_millis(
                    value()
                        .parse()
                        .unwrap_or_else(|_| usage("--log-every-ms MS")),
                )
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("cluster_bench: {problem}");
    }
    eprintln!(
        "usage: cluster_bench [--database-url URL] [--jobs N] [--workers 1,2] \
         [--log-secs S] [--log-every-ms MS]"
    );
    std::process::exit(2)
}

/// Where the databases come from: one per measurement.
enum Databases {
    Own(ci_e2e::postgres::TestPostgres),
    Given(String),
}

impl Databases {
    fn fresh(&self) -> String {
        match self {
            Databases::Own(pg) => pg.fresh_database(),
            Databases::Given(url) => url.clone(),
        }
    }
}

/// What W workers did with N jobs.
struct Throughput {
    workers: usize,
    jobs: usize,
    submit: Duration,
    drain: Duration,
    per_worker: Vec<usize>,
    claim_p50_ms: f64,
    claim_p99_ms: f64,
}

async fn throughput(url: &str, jobs: usize, workers: usize) -> Throughput {
    let submitter = Pg::connect(url).await.expect("connect");
    let upload = b"\x1f\x8b tiny upload".to_vec();
    let base = now_ms();
    let started = Instant::now();
    for i in 0..jobs {
        let job = Job {
            upload_bytes: upload.len() as u64,
            ..Job::queued(
                &format!("b{base}-{i}"),
                &format!("owner{}", i % OWNERS),
                i as u64 + 1,
                now_ms(),
                60,
            )
        };
        submitter
            .submit_with_upload(&job, &mut upload.as_slice(), CAPS)
            .await
            .expect("submit");
    }
    let submit = started.elapsed();

    // Every node connects (and checks the schema) before the clock starts.
    let mut pools = Vec::new();
    for _ in 0..workers {
        pools.push(Pg::connect(url).await.expect("connect"));
    }
    let gate = Arc::new(tokio::sync::Barrier::new(workers + 1));
    let mut tasks = Vec::new();
    for (w, pg) in pools.into_iter().enumerate() {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("bench-worker-{}", w + 1);
            let lease = Duration::from_secs(30);
            let mut done = 0;
            let mut claims = Vec::new();
            gate.wait().await;
            loop {
                let t = Instant::now();
                let Some(claimed) = pg.claim(&node, lease, CAPS).await.expect("claim") else {
                    break;
                };
                claims.push(t.elapsed());
                let id = &claimed.job.id;
                let mut bytes = Vec::new();
                let found = pg.upload_to(id, &mut bytes).await.expect("upload");
                assert!(found && !bytes.is_empty(), "job {id} has no upload");
                pg.apply_as(
                    id,
                    &node,
                    claimed.attempt,
                    &Transition::Phase(Phase::Testing),
                )
                .await
                .expect("phase");
                let finish = Transition::Finish {
                    verdict: Verdict::Passed,
                    at_ms: now_ms(),
                };
                pg.apply_as(id, &node, claimed.attempt, &finish)
                    .await
                    .expect("finish");
                done += 1;
            }
            (done, claims)
        }));
    }
    gate.wait().await;
    let started = Instant::now();
    let mut per_worker = Vec::new();
    let mut claims = Vec::new();
    for task in tasks {
        let (done, mut c) = task.await.expect("worker task");
        per_worker.push(done);
        claims.append(&mut c);
    }
    let drain = started.elapsed();
    assert_eq!(
        per_worker.iter().sum::<usize>(),
        jobs,
        "jobs claimed: {per_worker:?}"
    );
    let claims_ms: Vec<f64> = claims.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    Throughput {
        workers,
        jobs,
        submit,
        drain,
        per_worker,
        claim_p50_ms: quantile(&claims_ms, 0.5),
        claim_p99_ms: quantile(&claims_ms, 0.99),
    }
}

/// The latencies, in ms, of the lines a follower on another pool received.
struct Latency {
    lines: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

async fn log_latency(url: &str, secs: f64, every: Duration) -> Latency {
    let writer_pg = Pg::connect(url).await.expect("connect");
    let reader_pg = Pg::connect(url).await.expect("connect");
    let id = format!("lat{}", now_ms());
    writer_pg
        .client()
        .await
        .expect("client")
        .execute(
            "INSERT INTO jobs (id, seq, owner, status, record, attempt, node) \
             VALUES ($1, 0, 'u', 'running', '{}'::jsonb, 1, 'n1')",
            &[&id],
        )
        .await
        .expect("insert the job's row");
    let spool = tempfile::tempdir().expect("spool dir");
    let writer = PgLogs::new(writer_pg, spool.path().join("spool")).expect("writer logs");
    let reader = PgLogs::new(reader_pg, spool.path().join("reader")).expect("reader logs");
    let live = writer.open_live(&id, u64::MAX).await.expect("open_live");

    let count = ((secs / every.as_secs_f64()).ceil() as usize).max(1);
    let clock = Instant::now();
    let follower = {
        let stream = reader.stream(&id, 0);
        tokio::spawn(async move {
            let mut stream = stream;
            let mut pending = Vec::new();
            let mut lat = Vec::with_capacity(count);
            while lat.len() < count {
                let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .expect("no log bytes for 30 s")
                    .expect("the log stream ended")
                    .expect("reading the log");
                let now = clock.elapsed().as_nanos() as u64;
                pending.extend_from_slice(&chunk);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let line = String::from_utf8_lossy(&line);
                    if let Some(at) = line.strip_prefix("LAT ") {
                        let at: u64 = at.trim().parse().expect("a time");
                        lat.push((now - at) as f64 / 1e6);
                    }
                }
            }
            lat
        })
    };
    let mut tick = tokio::time::interval(every);
    for _ in 0..count {
        tick.tick().await;
        let line = format!("LAT {}\n", clock.elapsed().as_nanos());
        live.append(line.as_bytes()).expect("append");
    }
    let mut lat = follower.await.expect("follower");
    writer.close(&id).await;
    lat.sort_by(f64::total_cmp);
    Latency {
        lines: lat.len(),
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        max: *lat.last().unwrap_or(&0.0),
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64) as usize).min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = parse_args();
    let dbs = match &args.database_url {
        Some(url) => Databases::Given(url.clone()),
        None => {
            eprintln!("cluster_bench: starting PostgreSQL on loopback");
            Databases::Own(tokio::task::block_in_place(
                ci_e2e::postgres::TestPostgres::start,
            ))
        }
    };

    let mut rows = Vec::new();
    for &w in &args.workers {
        let url = tokio::task::block_in_place(|| dbs.fresh());
        eprintln!("cluster_bench: {} jobs, {w} worker(s)", args.jobs);
        rows.push(throughput(&url, args.jobs, w).await);
    }
    let url = tokio::task::block_in_place(|| dbs.fresh());
    eprintln!(
        "cluster_bench: log latency, a line every {:?} for {} s",
        args.log_every, args.log_secs
    );
    let lat = log_latency(&url, args.log_secs, args.log_every).await;

    println!("| queue (in-process, PostgreSQL on loopback) | figure |");
    println!("|---|---|");
    for r in &rows {
        let secs = r.drain.as_secs_f64();
        println!(
            "| {} job(s) claimed + finished, {} worker(s) (claim → upload → phase → finish) | {:.0} jobs/s ({:.2} s; per worker {:?}; claim p50 {:.2} ms, p99 {:.2} ms) |",
            r.jobs,
            r.workers,
            r.jobs as f64 / secs,
            secs,
            r.per_worker,
            r.claim_p50_ms,
            r.claim_p99_ms,
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "| {} submissions with a tiny upload, one at a time | {:.0} jobs/s |",
            r.jobs,
            r.jobs as f64 / r.submit.as_secs_f64()
        );
    }
    println!(
        "| log latency, worker → follower on another pool, p50 ({} lines, one every {} ms) | {:.2} ms |",
        lat.lines,
        args.log_every.as_millis(),
        lat.p50
    );
    println!(
        "| log latency, worker → follower on another pool, p99 | {:.2} ms |",
        lat.p99
    );
    println!(
        "| log latency, worker → follower on another pool, max | {:.2} ms |",
        lat.max
    );
}
