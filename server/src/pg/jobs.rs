//! Job records and the cluster's queue in the shared database: [`JobStore`] and
//! [`SharedQueue`] for [`Pg`].
//!
//! Every write of a record runs [`lifecycle::apply`] on the row locked `FOR UPDATE`, and
//! keeps the columns beside `record` (`seq`, `owner`, `status`, `upload_bytes`) in step.
//! The claim columns (`attempt`, `node`, `lease_until`, `stop_reason`) are the queue's:
//! a claim increments `attempt` (the fencing token), the heartbeat renews `lease_until` by
//! the database's clock, the reaper takes expired leases away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, GenericClient, Transaction};

use super::{store_error, Pg, PgError};
use crate::lifecycle::{self, Illegal, Transition};
use crate::model::{Job, Status};
use crate::queue::{Refusal, UserCaps};
use crate::store::{
    Claimed, Heartbeat, JobStore, NodeSeen, Reaped, SharedQueue, StoreError, SubmitRefused,
};

/// Uploads are stored in rows of at most this many bytes.
const UPLOAD_CHUNK: usize = 1 << 20;

/// The channel a submission or a requeue notifies; idle workers listen on it.
pub const WORK_CHANNEL: &str = "ci_work";

/// The channel a stop request of a running job notifies (payload: the job's id).
pub const STOP_CHANNEL: &str = "ci_stop";

/// Held by every claim for its transaction: claims run one at a time across the cluster, so
/// each counts the running jobs of the claims before it (the per-user running cap holds).
const CLAIM_LOCK: i64 = 0x6369_2d63_6c61_696d; // "ci-claim"

/// The statuses a job ends in, for SQL.
const TERMINAL: &str = "('passed', 'failed', 'error', 'timed_out', 'cancelled', 'lost')";

fn decode(value: serde_json::Value) -> Result<Job, PgError> {
    serde_json::from_value(value).map_err(|source| PgError::Corrupt {
        table: "jobs",
        source,
    })
}

fn encode(job: &Job) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(job).map_err(StoreError::backend)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Writes `job` back to its row with the columns beside it (the claim columns unchanged,
/// but an ended or queued job holds no lease).
async fn write_back(client: &impl GenericClient, job: &Job) -> Result<(), StoreError> {
    with_columns(
        client,
        "UPDATE jobs SET seq = $2, owner = $3, status = $4, upload_bytes = $5, record = $6, \
         lease_until = CASE WHEN $4 = 'running' THEN lease_until END \
         WHERE id = $1",
        job,
    )
    .await
}

/// Runs `sql` with the job's record and the columns kept beside it, as $1 id, $2 seq,
/// $3 owner, $4 status, $5 upload bytes, $6 record.
async fn with_columns(client: &impl GenericClient, sql: &str, job: &Job) -> Result<(), StoreError> {
    let record = encode(job)?;
    client
        .execute(
            sql,
            &[
                &job.id,
                &to_i64(job.seq),
                &job.owner,
                &job.status.as_str(),
                &to_i64(job.upload_bytes),
                &record,
            ],
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The row of `id`, locked for this transaction: its record, attempt and node.
async fn lock_job(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<(Job, i32, Option<String>), StoreError> {
    let row = tx
        .query_opt(
            "SELECT record, attempt, node FROM jobs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    let job = decode(row.get(0)).map_err(store_error)?;
    Ok((job, row.get(1), row.get(2)))
}

/// Appends a line written by the server (`==> LINE`, on a line of its own, as
/// [`crate::logs::LiveLog::note`] writes it) to the log of `job` in the database, in `tx`:
/// a chunk at the log's end, and the log's length grown by it.
pub(crate) async fn append_server_line(
    tx: &Transaction<'_>,
    job: &str,
    line: &str,
) -> Result<(), PgError> {
    tx.execute(
        "INSERT INTO logs (job) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&job],
    )
    .await?;
    let len: i64 = tx
        .query_one("SELECT len FROM logs WHERE job = $1 FOR UPDATE", &[&job])
        .await?
        .get(0);
    let last: Option<Vec<u8>> = tx
        .query_opt(
            "SELECT substring(bytes from length(bytes)) FROM log_chunks WHERE job = $1 \
             ORDER BY start_offset DESC LIMIT 1",
            &[&job],
        )
        .await?
        .map(|row| row.get(0));
    let at_line_start = match last.as_deref() {
        Some([.., last]) => *last == b'\n',
        _ => true,
    };
    let text = format!("{}==> {line}\n", if at_line_start { "" } else { "\n" });
    let bytes = text.as_bytes();
    tx.execute(
        "INSERT INTO log_chunks (job, start_offset, bytes) VALUES ($1, $2, $3)",
        &[&job, &len, &bytes],
    )
    .await?;
    tx.execute(
        "UPDATE logs SET len = len + $2 WHERE job = $1",
        &[&job, &(bytes.len() as i64)],
    )
    .await?;
    Ok(())
}

/// Marks the log of `job` complete (it gets no more bytes), creating it empty if needed.
async fn close_log(tx: &Transaction<'_>, job: &str) -> Result<(), PgError> {
    tx.execute(
        "INSERT INTO logs (job, len, done) VALUES ($1, 0, true) \
         ON CONFLICT (job) DO UPDATE SET done = true",
        &[&job],
    )
    .await?;
    Ok(())
}

impl Pg {
    /// The whole stored upload of a job, in memory (tests and tools; a worker streams it
    /// with [`SharedQueue::upload_to`]); `None` when it is gone.
    pub async fn upload(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let rows = client
            .query(
                "SELECT bytes FROM uploads WHERE job = $1 ORDER BY idx",
                &[&id],
            )
            .await
            .map_err(store_error)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        for row in rows {
            bytes.extend_from_slice(row.get::<_, &[u8]>(0));
        }
        Ok(Some(bytes))
    }
}

/// Reads into `buf` until it is full or the reader ends; how many bytes were read.
async fn read_full(
    from: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        let n = from.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[async_trait]
impl JobStore for Pg {
    async fn next_seq(&self) -> Result<u64, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let row = client
            .query_one("SELECT nextval('job_seq')", &[])
            .await
            .map_err(store_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn submit(&self, job: &Job) -> Result<(), StoreError> {
        let client = self.client().await.map_err(store_error)?;
        insert_job(&**client, job).await
    }

    async fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError> {
        let mut client = self.client().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        let (mut job, _, _) = lock_job(&tx, id).await?;
        lifecycle::apply(&mut job, transition)?;
        write_back(&*tx, &job).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(job)
    }

    async fn withdraw(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client().await.map_err(store_error)?;
        client
            .execute("DELETE FROM jobs WHERE id = $1", &[&id])
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let row = client
            .query_opt("SELECT record FROM jobs WHERE id = $1", &[&id])
            .await
            .map_err(store_error)?;
        row.map(|r| decode(r.get(0)).map_err(store_error))
            .transpose()
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let rows = client
            .query("SELECT record FROM jobs ORDER BY seq, id", &[])
            .await
            .map_err(store_error)?;
        rows.into_iter()
            .map(|r| decode(r.get(0)).map_err(store_error))
            .collect()
    }

    async fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let changed = client
            .execute(
                &format!(
                    "UPDATE jobs SET record = jsonb_set(record, '{{expired_ms}}', to_jsonb($2::bigint)) \
                     WHERE id = $1 AND status IN {TERMINAL} \
                     AND coalesce(record->'expired_ms', 'null'::jsonb) = 'null'::jsonb"
                ),
                &[&id, &at_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(changed == 1)
    }
}

async fn insert_job(client: &impl GenericClient, job: &Job) -> Result<(), StoreError> {
    with_columns(
        client,
        "INSERT INTO jobs (id, seq, owner, status, upload_bytes, record) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        job,
    )
    .await
}

#[async_trait]
impl SharedQueue for Pg {
    async fn submit_with_upload(
        &self,
        job: &Job,
        upload: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        caps: UserCaps,
    ) -> Result<(), SubmitRefused> {
        let mut client = self.client().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        // Submissions of one owner, on any node, count one after the other.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
            &[&job.owner],
        )
        .await
        .map_err(store_error)?;
        let row = tx
            .query_one(
                "SELECT count(*), coalesce(sum(upload_bytes), 0)::bigint FROM jobs \
                 WHERE owner = $1 AND status = 'queued'",
                &[&job.owner],
            )
            .await
            .map_err(store_error)?;
        let queued = row.get::<_, i64>(0) as usize;
        let queued_bytes = row.get::<_, i64>(1) as u64;
        if queued >= caps.queued {
            return Err(SubmitRefused::OverCap(Refusal::TooManyQueued { queued }));
        }
        if queued_bytes.saturating_add(job.upload_bytes) > caps.queued_bytes {
            return Err(SubmitRefused::OverCap(Refusal::TooManyBytes {
                queued_bytes,
            }));
        }
        insert_job(&*tx, job).await?;
        let mut chunk = vec![0u8; UPLOAD_CHUNK];
        for idx in 0i32.. {
            let len = read_full(upload, &mut chunk)
                .await
                .map_err(StoreError::backend)?;
            if len == 0 {
                break;
            }
            tx.execute(
                "INSERT INTO uploads (job, idx, bytes) VALUES ($1, $2, $3)",
                &[&job.id, &idx, &&chunk[..len]],
            )
            .await
            .map_err(store_error)?;
            if len < chunk.len() {
                break;
            }
        }
        // Delivered when the transaction commits.
        tx.execute("SELECT pg_notify($1, $2)", &[&WORK_CHANNEL, &job.id])
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    async fn upload_to(
        &self,
        id: &str,
        to: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<bool, StoreError> {
        use tokio::io::AsyncWriteExt;
        let client = self.client().await.map_err(store_error)?;
        // A chunk at a time: a worker never holds a whole upload in memory.
        for idx in 0i32.. {
            let row = client
                .query_opt(
                    "SELECT bytes FROM uploads WHERE job = $1 AND idx = $2",
                    &[&id, &idx],
                )
                .await
                .map_err(store_error)?;
            let Some(row) = row else {
                return Ok(idx > 0);
            };
            to.write_all(row.get::<_, &[u8]>(0))
                .await
                .map_err(StoreError::backend)?;
        }
        Ok(true)
    }

    async fn claim(
        &self,
        node: &str,
        lease: Duration,
        caps: UserCaps,
    ) -> Result<Option<Claimed>, StoreError> {
        let mut client = self.client().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK])
            .await
            .map_err(store_error)?;
        let running_cap = i64::try_from(caps.running).unwrap_or(i64::MAX);
        let row = tx
            .query_opt(
                "WITH running AS ( \
                   SELECT owner, count(*) AS n, count(*) FILTER (WHERE node = $2) AS here \
                   FROM jobs WHERE status = 'running' GROUP BY owner \
                 ) \
                 SELECT j.id, j.record, (extract(epoch from now()) * 1000)::bigint \
                 FROM jobs j LEFT JOIN running r ON r.owner = j.owner \
                 WHERE j.status = 'queued' AND coalesce(r.here, 0) < $1 \
                 ORDER BY coalesce(r.n, 0), j.seq \
                 LIMIT 1 \
                 FOR UPDATE OF j SKIP LOCKED",
                &[&running_cap, &node],
            )
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.get(0);
        let mut job = decode(row.get(1)).map_err(store_error)?;
        let now_ms: i64 = row.get(2);
        lifecycle::apply(&mut job, &Transition::Claim { at_ms: now_ms })?;
        let record = encode(&job)?;
        let row = tx
            .query_one(
                "UPDATE jobs SET status = $2, record = $3, attempt = attempt + 1, node = $4, \
                 lease_until = now() + make_interval(secs => $5), stop_reason = NULL \
                 WHERE id = $1 RETURNING attempt",
                &[&id, &job.status.as_str(), &record, &node, &secs(lease)],
            )
            .await
            .map_err(store_error)?;
        let attempt: i32 = row.get(0);
        tx.commit().await.map_err(store_error)?;
        Ok(Some(Claimed { job, attempt }))
    }

    async fn heartbeat(
        &self,
        node: &str,
        lease: Duration,
        held: &[(String, i32)],
    ) -> Result<Heartbeat, StoreError> {
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let attempts: Vec<i32> = held.iter().map(|(_, a)| *a).collect();
        let client = self.client().await.map_err(store_error)?;
        let rows = client
            .query(
                "WITH seen AS ( \
                   INSERT INTO nodes (name, roles, version) VALUES ($1, '', '') \
                   ON CONFLICT (name) DO UPDATE SET seen_at = now() \
                 ) \
                 UPDATE jobs j SET lease_until = now() + make_interval(secs => $2) \
                 FROM unnest($3::text[], $4::integer[]) AS h(id, attempt) \
                 WHERE j.id = h.id AND j.attempt = h.attempt AND j.node = $1 \
                   AND j.status = 'running' \
                 RETURNING j.id, j.stop_reason",
                &[&node, &secs(lease), &ids, &attempts],
            )
            .await
            .map_err(store_error)?;
        let mut beat = Heartbeat::default();
        let mut renewed = std::collections::HashSet::new();
        for row in rows {
            let id: String = row.get(0);
            if let Some(reason) = row.get::<_, Option<String>>(1) {
                beat.stop.push((id.clone(), reason));
            }
            renewed.insert(id);
        }
        beat.lost = held
            .iter()
            .filter(|(id, _)| !renewed.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        beat.stop.sort();
        Ok(beat)
    }

    async fn apply_as(
        &self,
        id: &str,
        node: &str,
        attempt: i32,
        transition: &Transition,
    ) -> Result<Job, StoreError> {
        let mut client = self.client().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        let (mut job, held_by, holder) = lock_job(&tx, id).await?;
        if held_by != attempt || holder.as_deref() != Some(node) {
            return Err(StoreError::Fenced {
                id: id.to_string(),
                attempt,
            });
        }
        lifecycle::apply(&mut job, transition)?;
        write_back(&*tx, &job).await?;
        if job.status.is_terminal() {
            tx.execute("DELETE FROM uploads WHERE job = $1", &[&id])
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(job)
    }

    async fn request_stop(
        &self,
        id: &str,
        reason: &str,
        cancel_reason: &str,
        at_ms: i64,
    ) -> Result<Job, StoreError> {
        let mut client = self.client().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        let (mut job, _, _) = lock_job(&tx, id).await?;
        match job.status {
            Status::Queued => {
                lifecycle::apply(
                    &mut job,
                    &Transition::CancelQueued {
                        reason: cancel_reason.to_string(),
                        at_ms,
                    },
                )?;
                write_back(&*tx, &job).await?;
                tx.execute("DELETE FROM uploads WHERE job = $1", &[&id])
                    .await
                    .map_err(store_error)?;
                close_log(&tx, id).await.map_err(store_error)?;
            }
            Status::Running => {
                tx.execute(
                    "UPDATE jobs SET stop_reason = $2 WHERE id = $1",
                    &[&id, &reason],
                )
                .await
                .map_err(store_error)?;
                tx.execute("SELECT pg_notify($1, $2)", &[&STOP_CHANNEL, &id])
                    .await
                    .map_err(store_error)?;
            }
            status => {
                return Err(StoreError::Illegal(Illegal {
                    id: id.to_string(),
                    status: status.as_str(),
                    what: "stop it",
                }))
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(job)
    }

    async fn reap(&self, retry_lost: u32, at_ms: i64) -> Result<Vec<Reaped>, StoreError> {
        let mut client = self.client().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        let rows = tx
            .query(
                "SELECT id, record, attempt, node, stop_reason FROM jobs \
                 WHERE status = 'running' AND lease_until < now() \
                 ORDER BY seq FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await
            .map_err(store_error)?;
        let retry_lost = i32::try_from(retry_lost).unwrap_or(i32::MAX);
        let mut reaped = Vec::new();
        for row in rows {
            let id: String = row.get(0);
            let mut job = decode(row.get(1)).map_err(store_error)?;
            let attempt: i32 = row.get(2);
            let node: String = row.get::<_, Option<String>>(3).unwrap_or_default();
            let stop: Option<String> = row.get(4);
            // A job someone asked to stop is not run again: it ends cancelled.
            let requeued = attempt <= retry_lost && stop.is_none();
            if requeued {
                lifecycle::apply(&mut job, &Transition::Requeue)?;
                write_back(&*tx, &job).await?;
                tx.execute(
                    "UPDATE jobs SET node = NULL, lease_until = NULL, stop_reason = NULL \
                     WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(store_error)?;
                append_server_line(
                    &tx,
                    &id,
                    &format!("worker {node} lost; attempt {}", attempt + 1),
                )
                .await
                .map_err(store_error)?;
            } else {
                match &stop {
                    Some(_) => {
                        lifecycle::apply(&mut job, &Transition::Requeue)?;
                        lifecycle::apply(
                            &mut job,
                            &Transition::CancelQueued {
                                reason: format!(
                                    "stopped on request; its worker {node} went silent before it stopped the job"
                                ),
                                at_ms,
                            },
                        )?;
                    }
                    None => lifecycle::apply(
                        &mut job,
                        &Transition::Lose {
                            reason: format!(
                                "its worker {node} went silent (no heartbeat within its lease) \
                                 on attempt {attempt}, and no attempt is left"
                            ),
                            at_ms,
                        },
                    )?,
                }
                write_back(&*tx, &job).await?;
                let line = match stop {
                    Some(_) => format!("worker {node} lost; the job was asked to stop"),
                    None => format!("worker {node} lost; no attempt left"),
                };
                append_server_line(&tx, &id, &line)
                    .await
                    .map_err(store_error)?;
                close_log(&tx, &id).await.map_err(store_error)?;
                tx.execute("DELETE FROM uploads WHERE job = $1", &[&id])
                    .await
                    .map_err(store_error)?;
            }
            reaped.push(Reaped {
                id,
                node,
                attempt,
                requeued,
            });
        }
        if reaped.iter().any(|r| r.requeued) {
            tx.execute("SELECT pg_notify($1, '')", &[&WORK_CHANNEL])
                .await
                .map_err(store_error)?;
        }
        // Housekeeping: an ended job needs its upload no more.
        tx.execute(
            &format!(
                "DELETE FROM uploads u USING jobs j WHERE u.job = j.id AND j.status IN {TERMINAL}"
            ),
            &[],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(reaped)
    }

    async fn queue_position(&self, id: &str) -> Result<Option<usize>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let row = client
            .query_one(
                "SELECT count(*) FROM jobs WHERE status = 'queued' \
                 AND seq <= (SELECT seq FROM jobs WHERE id = $1 AND status = 'queued')",
                &[&id],
            )
            .await
            .map_err(store_error)?;
        let n: i64 = row.get(0);
        Ok((n > 0).then_some(n as usize))
    }

    async fn register_node(
        &self,
        node: &str,
        roles: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await.map_err(store_error)?;
        client
            .execute(
                "INSERT INTO nodes (name, roles, version) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET roles = excluded.roles, \
                 version = excluded.version, started_at = now(), seen_at = now()",
                &[&node, &roles, &version],
            )
            .await
            .map_err(store_error)?;
        client
            .execute(
                "DELETE FROM nodes WHERE seen_at < now() - interval '1 day'",
                &[],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn publish_pythons(
        &self,
        node: &str,
        pythons: &[ci_protocol::PythonView],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_value(pythons).map_err(StoreError::backend)?;
        let client = self.client().await.map_err(store_error)?;
        client
            .execute(
                "UPDATE nodes SET pythons = $2, seen_at = now() WHERE name = $1",
                &[&node, &json],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn worker_pythons(
        &self,
        fresh: Duration,
    ) -> Result<Vec<ci_protocol::PythonView>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let row = client
            .query_opt(
                "SELECT pythons FROM nodes \
                 WHERE seen_at > now() - make_interval(secs => $1) \
                   AND jsonb_array_length(pythons) > 0 \
                 ORDER BY seen_at DESC LIMIT 1",
                &[&secs(fresh)],
            )
            .await
            .map_err(store_error)?;
        match row {
            None => Ok(Vec::new()),
            Some(row) => {
                let json: serde_json::Value = row.get(0);
                serde_json::from_value(json).map_err(StoreError::backend)
            }
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeSeen>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let rows = client
            .query(
                "SELECT name, roles, version, extract(epoch from now() - seen_at)::float8 \
                 FROM nodes ORDER BY name",
                &[],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|r| NodeSeen {
                name: r.get(0),
                roles: r.get(1),
                version: r.get(2),
                seen_secs_ago: r.get(3),
            })
            .collect())
    }

    async fn wait_for_work(&self, poll: Duration) {
        let notified = self.listener.wake.notified();
        self.listener.ensure(self.dedicated());
        let _ = tokio::time::timeout(poll, notified).await;
    }
}

/// A node's connection that has run `LISTEN ci_work`, made on first use and again after it
/// dropped: a task of its own forwards each notification to `wake`.
#[derive(Default)]
pub struct WorkListener {
    wake: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WorkListener {
    /// Starts the listening task unless it runs: never waits, never fails (a connection that
    /// cannot be made is tried again at the next call).
    fn ensure(&self, connect: super::Dedicated) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *task = Some(runtime.spawn(listen(connect, self.wake.clone())));
    }
}

impl Drop for WorkListener {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Wakes every waiter now, and the next one to wait if none waits.
fn wake_all(wake: &Notify) {
    wake.notify_waiters();
    wake.notify_one();
}

/// Listens on [`WORK_CHANNEL`] until the connection drops. One task: aborting it closes the
/// connection.
async fn listen(connect: super::Dedicated, wake: Arc<Notify>) {
    let (client, mut connection) = match connect.connect().await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("cannot listen for work: {e}");
            return;
        }
    };
    let forward = {
        let wake = wake.clone();
        async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake_all(&wake),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("the connection listening for work dropped: {e}");
                        break;
                    }
                }
            }
        }
    };
    tokio::pin!(forward);
    let subscribe = client.batch_execute("LISTEN ci_work");
    tokio::select! {
        () = &mut forward => return,
        subscribed = subscribe => match subscribed {
            // Anything submitted while nobody listened is found by the next claim.
            Ok(()) => wake_all(&wake),
            Err(e) => {
                tracing::debug!("cannot listen for work: {e}");
                return;
            }
        },
    }
    forward.await;
    drop(client);
    // Work may have come while the connection was down.
    wake_all(&wake);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Verdict;
    use crate::model::Phase;

    const CAPS: UserCaps = UserCaps {
        queued: 100,
        queued_bytes: 1 << 40,
        running: 100,
    };

    async fn fresh() -> Pg {
        let url = ci_e2e::postgres::shared().fresh_database();
        Pg::connect(&url).await.unwrap()
    }

    fn job(id: &str, owner: &str, seq: u64, upload_bytes: u64) -> Job {
        Job {
            upload_bytes,
            ..Job::queued(id, owner, seq, 1, 60)
        }
    }

    async fn submit(pg: &Pg, id: &str, owner: &str, seq: u64) {
        pg.submit_with_upload(&job(id, owner, seq, 10), &mut &b"tarball"[..], CAPS)
            .await
            .unwrap();
    }

    /// The whole log of `id` as its chunks hold it, with each chunk's offset.
    async fn log_of(pg: &Pg, id: &str) -> (Vec<(i64, String)>, i64, bool) {
        let client = pg.client().await.unwrap();
        let chunks = client
            .query(
                "SELECT start_offset, bytes FROM log_chunks WHERE job = $1 ORDER BY start_offset",
                &[&id],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                let bytes: Vec<u8> = r.get(1);
                (r.get(0), String::from_utf8(bytes).unwrap())
            })
            .collect();
        let row = client
            .query_one("SELECT len, done FROM logs WHERE job = $1", &[&id])
            .await
            .unwrap();
        (chunks, row.get(0), row.get(1))
    }

    /// Makes every running lease expired by the database's clock.
    async fn expire_leases(pg: &Pg) {
        let client = pg.client().await.unwrap();
        client
            .execute(
                "UPDATE jobs SET lease_until = now() - interval '1 second' \
                 WHERE status = 'running'",
                &[],
            )
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_jobs_conform() {
        let runtime = tokio::runtime::Handle::current();
        crate::store::conformance::run(|| {
            tokio::task::block_in_place(|| runtime.block_on(fresh()))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_claimers_never_get_the_same_job() {
        let pg = fresh().await;
        for i in 0..20 {
            submit(&pg, &format!("j{i}"), &format!("u{}", i % 3), i + 1).await;
        }
        let claimer = |node: &'static str| {
            let pg = pg.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(c) = pg.claim(node, Duration::from_secs(60), CAPS).await.unwrap() {
                    assert_eq!(c.attempt, 1);
                    assert_eq!(c.job.status, Status::Running);
                    got.push(c.job.id);
                }
                got
            })
        };
        let (a, b) = (claimer("n1"), claimer("n2"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "{a:?} {b:?}");
        assert_eq!(a.len() + b.len(), 20, "a job claimed twice: {a:?} {b:?}");
        let stored = pg.get("j0").await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Running);
        assert!(stored.started_ms.is_some());
    }

    #[tokio::test]
    async fn claim_is_fair_and_keeps_the_running_cap() {
        let pg = fresh().await;
        for (id, owner, seq) in [
            ("a1", "a", 1),
            ("a2", "a", 2),
            ("a3", "a", 3),
            ("b1", "b", 4),
        ] {
            submit(&pg, id, owner, seq).await;
        }
        let caps = UserCaps { running: 2, ..CAPS };
        let mut order = Vec::new();
        while let Some(c) = pg.claim("n", Duration::from_secs(60), caps).await.unwrap() {
            order.push(c.job.id);
        }
        assert_eq!(order, ["a1", "b1", "a2"], "a3 waits: a runs 2");
        pg.apply(
            "a1",
            &Transition::Finish {
                verdict: Verdict::Passed,
                at_ms: 5,
            },
        )
        .await
        .unwrap();
        let next = pg.claim("n", Duration::from_secs(60), caps).await.unwrap();
        assert_eq!(next.unwrap().job.id, "a3");
    }

    #[tokio::test]
    async fn submissions_keep_the_per_user_queue_caps() {
        let pg = fresh().await;
        let caps = UserCaps {
            queued: 2,
            queued_bytes: 100,
            running: 1,
        };
        pg.submit_with_upload(&job("j1", "u", 1, 40), &mut &b"x"[..], caps)
            .await
            .unwrap();
        pg.submit_with_upload(&job("j2", "u", 2, 40), &mut &b"x"[..], caps)
            .await
            .unwrap();
        let refused = pg
            .submit_with_upload(&job("j3", "u", 3, 1), &mut &b"x"[..], caps)
            .await;
        assert!(
            matches!(
                refused,
                Err(SubmitRefused::OverCap(Refusal::TooManyQueued { queued: 2 }))
            ),
            "{refused:?}"
        );
        assert!(pg.get("j3").await.unwrap().is_none());
        pg.submit_with_upload(&job("v1", "v", 4, 60), &mut &b"x"[..], caps)
            .await
            .unwrap();
        pg.submit_with_upload(&job("v2", "v", 5, 1), &mut &b"x"[..], caps)
            .await
            .unwrap();
        let refused = pg
            .submit_with_upload(
                &job("v3", "v", 6, 40),
                &mut &b"x"[..],
                UserCaps { queued: 10, ..caps },
            )
            .await;
        assert!(
            matches!(
                refused,
                Err(SubmitRefused::OverCap(Refusal::TooManyBytes {
                    queued_bytes: 61
                }))
            ),
            "{refused:?}"
        );
        // Running jobs do not count against the queue caps.
        pg.claim("n", Duration::from_secs(60), CAPS)
            .await
            .unwrap()
            .unwrap();
        pg.submit_with_upload(&job("j4", "u", 7, 40), &mut &b"x"[..], caps)
            .await
            .unwrap();
        assert_eq!(pg.queue_position("j2").await.unwrap(), Some(1));
        assert_eq!(pg.queue_position("j4").await.unwrap(), Some(4));
        assert_eq!(pg.queue_position("j1").await.unwrap(), None);
        assert_eq!(pg.queue_position("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_upload_reads_back_whole() {
        let pg = fresh().await;
        let upload: Vec<u8> = (0..3 * (1 << 20) + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        pg.submit_with_upload(
            &job("j", "u", 1, upload.len() as u64),
            &mut &upload[..],
            CAPS,
        )
        .await
        .unwrap();
        assert!(pg.upload("j").await.unwrap().unwrap() == upload);
        let mut streamed = Vec::new();
        assert!(pg.upload_to("j", &mut streamed).await.unwrap());
        assert!(
            streamed == upload,
            "streamed chunk by chunk, the same bytes"
        );
        assert!(!pg.upload_to("none", &mut Vec::new()).await.unwrap());
        let client = pg.client().await.unwrap();
        let rows: i64 = client
            .query_one("SELECT count(*) FROM uploads WHERE job = 'j'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 4);
        assert!(pg.upload("other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_heartbeat_renews_leases_and_reports_stops_and_losses() {
        let pg = fresh().await;
        for (id, seq) in [("a", 1), ("b", 2), ("c", 3)] {
            submit(&pg, id, "u", seq).await;
        }
        let lease = Duration::from_secs(1);
        for _ in 0..3 {
            pg.claim("n1", lease, CAPS).await.unwrap().unwrap();
        }
        pg.request_stop("b", "cancelled", "unused", 5)
            .await
            .unwrap();
        let held = [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 7),
            ("gone".to_string(), 1),
        ];
        let beat = pg
            .heartbeat("n1", Duration::from_secs(600), &held)
            .await
            .unwrap();
        assert_eq!(beat.stop, [("b".to_string(), "cancelled".to_string())]);
        assert_eq!(beat.lost, ["c", "gone"]);
        let client = pg.client().await.unwrap();
        let renewed: Vec<String> = client
            .query(
                "SELECT id FROM jobs WHERE lease_until > now() + interval '500 seconds' ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(renewed, ["a", "b"]);
        // Another node holds none of them.
        let other = pg.heartbeat("n2", lease, &held[..1]).await.unwrap();
        assert_eq!(other.lost, ["a"]);
        let nodes: Vec<String> = pg
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(nodes, ["n1", "n2"]);
    }

    #[tokio::test]
    async fn a_worker_is_fenced_once_its_job_was_requeued_or_claimed_again() {
        let pg = fresh().await;
        submit(&pg, "j", "u", 1).await;
        let first = pg.claim("n1", Duration::ZERO, CAPS).await.unwrap().unwrap();
        assert_eq!(first.attempt, 1);
        let phase = Transition::Phase(Phase::Testing);
        pg.apply_as("j", "n1", 1, &phase).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reaped = pg.reap(2, 9).await.unwrap();
        assert_eq!(
            reaped,
            [Reaped {
                id: "j".into(),
                node: "n1".into(),
                attempt: 1,
                requeued: true
            }]
        );
        let requeued = pg.get("j").await.unwrap().unwrap();
        assert_eq!(
            (requeued.status, requeued.started_ms),
            (Status::Queued, None)
        );
        assert!(matches!(
            pg.apply_as("j", "n1", 1, &phase).await,
            Err(StoreError::Fenced { attempt: 1, .. })
        ));
        let second = pg
            .claim("n2", Duration::from_secs(60), CAPS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.attempt, 2);
        assert!(matches!(
            pg.apply_as("j", "n1", 1, &phase).await,
            Err(StoreError::Fenced { .. })
        ));
        assert!(matches!(
            pg.apply_as("j", "n2", 1, &phase).await,
            Err(StoreError::Fenced { .. })
        ));
        pg.apply_as("j", "n2", 2, &phase).await.unwrap();
        let finish = Transition::Finish {
            verdict: Verdict::Passed,
            at_ms: 20,
        };
        let done = pg.apply_as("j", "n2", 2, &finish).await.unwrap();
        assert_eq!(done.status, Status::Passed);
        assert!(
            pg.upload("j").await.unwrap().is_none(),
            "an ended job's upload goes"
        );
        assert!(matches!(
            pg.apply_as("j", "n2", 2, &finish).await,
            Err(StoreError::Illegal(_))
        ));
        assert!(matches!(
            pg.apply_as("nope", "n2", 2, &finish).await,
            Err(StoreError::NotFound(_))
        ));
    }

    /// A worker frozen in the middle of a log append (SIGSTOP) holds the log's row lock: the
    /// database ends its session after a few seconds, and the reaper takes the job then
    /// instead of waiting for ever (it did once: every node's reaper stuck behind the lock).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_worker_frozen_in_a_transaction_does_not_block_the_reaper() {
        let pg = fresh().await;
        submit(&pg, "j", "u", 1).await;
        pg.claim("frozen", Duration::from_millis(1), CAPS)
            .await
            .unwrap()
            .unwrap();
        let mut frozen = pg.client().await.unwrap();
        let tx = frozen.transaction().await.unwrap();
        tx.batch_execute(
            "INSERT INTO logs (job) VALUES ('j') ON CONFLICT DO NOTHING; \
             SELECT len FROM logs WHERE job = 'j' FOR UPDATE",
        )
        .await
        .unwrap();
        // The frozen worker sends nothing more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let reaped = pg.reap(1, 5).await.unwrap();
        assert_eq!(reaped.len(), 1, "{reaped:?}");
        assert!(reaped[0].requeued);
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the reaper waited {:?}",
            started.elapsed()
        );
        assert!(tx.commit().await.is_err(), "the frozen session was ended");
    }

    #[tokio::test]
    async fn the_reaper_requeues_until_the_retries_are_used_up() {
        let pg = fresh().await;
        submit(&pg, "j", "u", 1).await;
        submit(&pg, "alive", "u", 2).await;
        // The job's own output so far, not ending in a newline.
        {
            let client = pg.client().await.unwrap();
            client
                .batch_execute(
                    "INSERT INTO logs (job, len) VALUES ('j', 7); \
                     INSERT INTO log_chunks (job, start_offset, bytes) VALUES ('j', 0, 'partial')",
                )
                .await
                .unwrap();
        }
        pg.claim("n1", Duration::from_secs(60), CAPS)
            .await
            .unwrap()
            .unwrap();
        assert!(pg.reap(1, 5).await.unwrap().is_empty(), "its lease holds");
        expire_leases(&pg).await;
        let alive = pg
            .claim("n9", Duration::from_secs(60), CAPS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(alive.job.id, "alive");
        let reaped = pg.reap(1, 5).await.unwrap();
        assert_eq!(reaped.len(), 1);
        assert!(reaped[0].requeued);
        let again = pg
            .claim("n2", Duration::from_secs(60), CAPS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.job.id.as_str(), again.attempt), ("j", 2));
        expire_leases(&pg).await;
        let reaped = pg.reap(1, 50).await.unwrap();
        assert_eq!(
            reaped,
            [
                Reaped {
                    id: "j".into(),
                    node: "n2".into(),
                    attempt: 2,
                    requeued: false
                },
                Reaped {
                    id: "alive".into(),
                    node: "n9".into(),
                    attempt: 1,
                    requeued: true
                }
            ]
        );
        let lost = pg.get("j").await.unwrap().unwrap();
        assert_eq!((lost.status, lost.finished_ms), (Status::Lost, Some(50)));
        assert!(lost.reason.unwrap().contains("worker n2"));
        assert!(pg.upload("j").await.unwrap().is_none());
        let first = "\n==> worker n1 lost; attempt 2\n";
        let second = "==> worker n2 lost; no attempt left\n";
        let (chunks, len, done) = log_of(&pg, "j").await;
        assert_eq!(
            chunks,
            [
                (0, "partial".to_string()),
                (7, first.to_string()),
                (7 + first.len() as i64, second.to_string())
            ]
        );
        assert_eq!(len, 7 + (first.len() + second.len()) as i64);
        assert!(done);
        let (chunks, _, done) = log_of(&pg, "alive").await;
        assert_eq!(chunks, [(0, "==> worker n9 lost; attempt 2\n".to_string())]);
        assert!(!done);
    }

    #[tokio::test]
    async fn a_stop_cancels_a_queued_job_and_flags_a_running_one() {
        let pg = fresh().await;
        submit(&pg, "q", "u", 2).await;
        submit(&pg, "r", "u", 1).await;
        pg.claim("n", Duration::from_secs(60), CAPS)
            .await
            .unwrap()
            .unwrap();
        let cancelled = pg
            .request_stop("q", "cancelled", "cancelled by its owner", 7)
            .await
            .unwrap();
        assert_eq!(cancelled.status, Status::Cancelled);
        assert_eq!(cancelled.reason.as_deref(), Some("cancelled by its owner"));
        assert_eq!(
            pg.get("q").await.unwrap().unwrap().status,
            Status::Cancelled
        );
        assert!(pg.upload("q").await.unwrap().is_none());
        let (chunks, len, done) = log_of(&pg, "q").await;
        assert!(chunks.is_empty() && len == 0 && done);

        let running = pg
            .request_stop("r", "cancelled", "unused", 7)
            .await
            .unwrap();
        assert_eq!(running.status, Status::Running);
        let beat = pg
            .heartbeat("n", Duration::from_secs(60), &[("r".into(), 1)])
            .await
            .unwrap();
        assert_eq!(beat.stop, [("r".to_string(), "cancelled".to_string())]);
        // Its worker went silent before it stopped the job: not run again.
        expire_leases(&pg).await;
        let reaped = pg.reap(5, 9).await.unwrap();
        assert!(!reaped[0].requeued);
        assert_eq!(
            pg.get("r").await.unwrap().unwrap().status,
            Status::Cancelled
        );
        assert!(matches!(
            pg.request_stop("r", "cancelled", "x", 9).await,
            Err(StoreError::Illegal(_))
        ));
        assert!(matches!(
            pg.request_stop("nope", "cancelled", "x", 9).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_submission_wakes_a_waiting_worker() {
        let pg = fresh().await;
        // The first wait connects the listener and returns once it listens; the second
        // takes the wake-up that was left for a later waiter.
        pg.wait_for_work(Duration::from_secs(10)).await;
        pg.wait_for_work(Duration::from_millis(10)).await;
        let waiter = {
            let pg = pg.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                pg.wait_for_work(Duration::from_secs(30)).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        submit(&pg, "j", "u", 1).await;
        let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the submission woke the worker")
            .unwrap();
        assert!(
            waited >= Duration::from_millis(150),
            "woke early: {waited:?}"
        );
    }

    #[tokio::test]
    async fn nodes_register_and_are_seen() {
        let pg = fresh().await;
        pg.register_node("w1", "worker", "1.0").await.unwrap();
        pg.register_node("w1", "api,worker", "1.1").await.unwrap();
        let nodes = pg.nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(
            (nodes[0].roles.as_str(), nodes[0].version.as_str()),
            ("api,worker", "1.1")
        );
        assert!(nodes[0].seen_secs_ago < 5.0, "{}", nodes[0].seen_secs_ago);
    }

    #[tokio::test]
    async fn an_outage_is_unavailable_and_passes() {
        let server = ci_e2e::postgres::TestPostgres::start();
        let pg = Pg::connect(&server.fresh_database()).await.unwrap();
        submit(&pg, "j", "u", 1).await;
        pg.wait_for_work(Duration::from_secs(10)).await;
        server.stop_immediate();
        assert!(
            matches!(pg.get("j").await, Err(StoreError::Unavailable(_))),
            "{:?}",
            pg.get("j").await
        );
        assert!(matches!(
            pg.claim("n", Duration::from_secs(60), CAPS).await,
            Err(StoreError::Unavailable(_))
        ));
        // Waiting for work neither fails nor hangs while the database is down.
        let start = std::time::Instant::now();
        pg.wait_for_work(Duration::from_millis(300)).await;
        pg.wait_for_work(Duration::from_millis(300)).await;
        assert!(start.elapsed() < Duration::from_secs(5));
        server.start_again();
        assert_eq!(pg.get("j").await.unwrap().unwrap().id, "j");
        // The listener connects again: a submission wakes a waiter.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            pg.wait_for_work(Duration::from_millis(200)).await;
            let waiter = {
                let pg = pg.clone();
                tokio::spawn(async move { pg.wait_for_work(Duration::from_secs(30)).await })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            pg.submit_with_upload(
                &job(&format!("k{}", start.elapsed().as_nanos()), "u", 2, 1),
                &mut &b"x"[..],
                CAPS,
            )
            .await
            .unwrap();
            if tokio::time::timeout(Duration::from_secs(2), waiter)
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no wake-up after the restart"
            );
        }
    }
}
