-- Migration 1: the whole shared state of a cluster of ci-server nodes.
-- Times the cluster compares (leases, heartbeats) are the database's clock, never a node's.

-- Submission numbers: order the queue and listings across nodes.
CREATE SEQUENCE job_seq;

-- One row per job. `record` is the job as the server's model serializes it (the same JSON as
-- the embedded store); the columns beside it are what queries select and lock on, kept in
-- step with `record` by every write.
CREATE TABLE jobs (
    id            text PRIMARY KEY,
    seq           bigint NOT NULL,
    owner         text NOT NULL,
    status        text NOT NULL,
    upload_bytes  bigint NOT NULL DEFAULT 0,
    record        jsonb NOT NULL,
    -- Incremented by every claim; every later write of the claiming worker carries it
    -- (the fencing token).
    attempt       integer NOT NULL DEFAULT 0,
    -- The worker node running it, while it runs; cleared when its lease is taken away.
    node          text,
    lease_until   timestamptz,
    -- A stop asked for from any node (cancel, owner disabled), delivered by the heartbeat.
    stop_reason   text
);
CREATE INDEX jobs_queued ON jobs (seq) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (node) WHERE status = 'running';
CREATE INDEX jobs_owner ON jobs (owner, status);

-- The upload of a queued job, as the client sent it (a gzipped tar), in chunks; written in
-- the transaction that records the job, so a 201 means it is stored. Removed when the job ends.
CREATE TABLE uploads (
    job    text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx    integer NOT NULL,
    bytes  bytea NOT NULL,
    PRIMARY KEY (job, idx)
);

-- A job's log: its length and whether it is complete. Chunks are contiguous ranges
-- [start_offset, start_offset + length(bytes)).
CREATE TABLE logs (
    job   text PRIMARY KEY,
    len   bigint NOT NULL DEFAULT 0,
    done  boolean NOT NULL DEFAULT false
);
CREATE TABLE log_chunks (
    job           text NOT NULL,
    start_offset  bigint NOT NULL,
    bytes         bytea NOT NULL,
    PRIMARY KEY (job, start_offset)
);

-- What an ended job keeps beside its log (report.json, junit.xml, artifacts.tar.gz), chunked.
CREATE TABLE results (
    job    text NOT NULL,
    name   text NOT NULL,
    idx    integer NOT NULL,
    bytes  bytea NOT NULL,
    PRIMARY KEY (job, name, idx)
);

CREATE TABLE users (
    id      text PRIMARY KEY,
    email   text NOT NULL UNIQUE,
    record  jsonb NOT NULL
);
CREATE TABLE api_keys (
    id       text PRIMARY KEY,
    user_id  text NOT NULL,
    record   jsonb NOT NULL
);

-- The nodes of the cluster, as they last said they were alive.
CREATE TABLE nodes (
    name        text PRIMARY KEY,
    roles       text NOT NULL,
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    -- A worker's Pythons (`GET /v1/pythons` of its images), for api nodes that have none.
    pythons     jsonb NOT NULL DEFAULT '[]'::jsonb
);
