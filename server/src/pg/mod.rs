//! The PostgreSQL backend (`--database-url`): the job records, users and keys, logs, uploads
//! and results of a cluster of `ci-server` nodes that share one database. Without a database
//! URL the server keeps all of it in its data directory (sled and files), as a single node.
//!
//! One [`Pg`] is a connection pool (deadpool over tokio-postgres). Its schema is applied at
//! start, under an advisory lock, so nodes that start together agree on it. Every time a
//! cluster compares (leases, heartbeats) is the database's `now()`, never a node's clock.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

pub mod accounts;
pub mod jobs;
pub mod logs;
pub mod results;

/// The migrations, in order; a database records the last one applied in `schema_version`.
const MIGRATIONS: &[&str] = &[include_str!("schema.sql")];

/// Any number that no other user of the database is likely to take: the advisory lock held
/// while the schema is applied.
const MIGRATION_LOCK: i64 = 0x6369_2d73_6572_7665; // "ci-serve"

/// Connections a node keeps to the database at most.
const POOL_SIZE: usize = 16;

/// How long a node waits for a connection from its pool, or for a new one, before it says
/// the database is unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session of a node may sit in a transaction without sending anything before
/// the database ends it (a frozen node's locks are released).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// The longest any statement of a node waits for a lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database cannot be reached now (down, restarting, the pool timed out): worth
    /// retrying; the API answers 503 with `Retry-After`.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("bad database URL: {0}")]
    Url(String),
    #[error("corrupt record in {table}: {source}")]
    Corrupt {
        table: &'static str,
        source: serde_json::Error,
    },
}

impl PgError {
    /// Whether this is an outage rather than a refusal: the connection is closed or cannot
    /// be made, or the server is shutting down or starting.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Unavailable(_) => true,
            PgError::Query(e) => is_outage(e),
            _ => false,
        }
    }
}

/// Whether a client error means the database went away, not that it refused a statement.
pub fn is_outage(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08 (connection exception), 57P01-57P03 (admin shutdown, crash shutdown,
        // cannot connect now).
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        // No SQLSTATE: an I/O error on the socket.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// A database error as the stores report it: an outage is [`StoreError::Unavailable`] (worth
/// retrying, 503), anything else a backend error.
pub(crate) fn store_error(e: impl Into<PgError>) -> crate::store::StoreError {
    let e = e.into();
    if e.is_unavailable() {
        crate::store::StoreError::Unavailable(match e {
            PgError::Unavailable(text) => text,
            other => other.to_string(),
        })
    } else {
        crate::store::StoreError::backend(e)
    }
}

/// A database error as an I/O error of the log and result stores: an outage is
/// `ConnectionAborted`, so their callers can tell it from a refusal.
pub(crate) fn io_error(e: PgError) -> std::io::Error {
    let kind = if e.is_unavailable() {
        std::io::ErrorKind::ConnectionAborted
    } else {
        std::io::ErrorKind::Other
    };
    std::io::Error::new(kind, e)
}

/// Opens a connection outside the pool, with the pool's settings and TLS.
#[derive(Clone)]
pub(crate) struct Dedicated {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// A connection of its own: the client and the connection future to drive.
pub(crate) type DedicatedConnection = (
    tokio_postgres::Client,
    tokio_postgres::Connection<
        tokio_postgres::Socket,
        <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
    >,
);

impl Dedicated {
    pub(crate) async fn connect(&self) -> Result<DedicatedConnection, tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// The TLS connector of every connection: the system's roots, and the certificates of `ca`.
fn tls(ca: Option<&std::path::Path>) -> Result<MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| PgError::Url(format!("{}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(PgError::Url(format!(
                "{}: no PEM certificate in it",
                ca.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| PgError::Url(format!("{}: {e}", ca.display())))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Url(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) if !is_outage(&e) => PgError::Query(e),
            // "error connecting to server: Connection refused (os error 111)".
            e => PgError::Unavailable(crate::error::chain(&e)),
        }
    }
}

/// A pool of connections to the cluster's database. Cheap to clone.
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
    config: tokio_postgres::Config,
    /// TLS for every connection, as the URL's `sslmode` asks (`prefer` by default: TLS when
    /// the server offers it; `require` refuses a server that does not). Certificates are
    /// verified against the system's roots and `--database-ca`.
    tls: MakeRustlsConnect,
    /// The connection of its own that listens for `ci_work` ([`crate::store::SharedQueue::wait_for_work`]),
    /// made on first use.
    listener: std::sync::Arc<jobs::WorkListener>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("url", &redacted(&self.config))
            .finish()
    }
}

/// The database as a log line may name it: user, host(s), port(s) and database, never the
/// password.
pub fn redacted(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgres://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl Pg {
    /// Connects to `url` and applies the schema. Fails when the database cannot be reached:
    /// a node does not start without its database.
    pub async fn connect(url: &str) -> Result<Pg, PgError> {
        Pg::connect_with(url, None).await
    }

    /// [`Pg::connect`], trusting the certificates of the PEM file `ca` too (a database with a
    /// certificate of its own CA: `--database-ca`).
    pub async fn connect_with(url: &str, ca: Option<&std::path::Path>) -> Result<Pg, PgError> {
        let tls = tls(ca)?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                PgError::Url(format!(
                    "{e} (expected postgres://USER:PASSWORD@HOST:PORT/DB)"
                ))
            })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // A node that freezes inside a transaction (SIGSTOP, a paused VM) holds its row
        // locks only so long: the database ends its session, and the reaper can take its
        // jobs. No statement of ours waits on a lock without end either.
        config.options(format!(
            "-c idle_in_transaction_session_timeout={} -c lock_timeout={}",
            IDLE_IN_TRANSACTION.as_millis(),
            LOCK_TIMEOUT.as_millis()
        ));
        config.application_name("ci-server");
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // A connection that the database closed (a restart) is noticed before it is
                // handed out again.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Url(e.to_string()))?;
        let pg = Pg {
            pool,
            config,
            tls,
            listener: Default::default(),
        };
        pg.migrate().await?;
        Ok(pg)
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.pool.get().await?)
    }

    /// What opens a connection of its own, outside the pool (`LISTEN`).
    pub(crate) fn dedicated(&self) -> Dedicated {
        Dedicated {
            config: self.config.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The connection settings, for a connection of its own (`LISTEN`).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Applies the migrations this database has not seen yet, one transaction each, while
    /// holding an advisory lock: nodes that start at once apply each one once.
    async fn migrate(&self) -> Result<(), PgError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let applied = async {
            // Looked for first: `IF NOT EXISTS` on a table that exists sends a NOTICE,
            // which tokio-postgres logs on every start.
            let exists: bool = client
                .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)",
                    )
                    .await?;
            }
            let row = client
                .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
                .await?;
            let current: i32 = row.get(0);
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                let version = i as i32 + 1;
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO schema_version VALUES ($1)", &[&version])
                    .await?;
                tx.commit().await?;
                tracing::info!(version, "database schema migrated");
            }
            Ok::<_, PgError>(())
        }
        .await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        applied
    }

    /// The server's version string (`SHOW server_version`), for `doctor`.
    pub async fn server_version(&self) -> Result<String, PgError> {
        let client = self.client().await?;
        let row = client.query_one("SHOW server_version", &[]).await?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `sslmode=require`, the connections are TLS, verified: a database whose
    /// certificate no trusted CA signed is refused, and `--database-ca` makes it trusted.
    #[tokio::test(flavor = "multi_thread")]
    async fn tls_is_required_and_verified() {
        let (server, ca) = tokio::task::spawn_blocking(ci_e2e::postgres::TestPostgres::start_tls)
            .await
            .unwrap();
        let url = format!("{}?sslmode=require", server.url());
        let refused = Pg::connect(&url).await.unwrap_err();
        assert!(
            crate::error::chain(&refused).contains("certificate"),
            "{}",
            crate::error::chain(&refused)
        );
        let pg = Pg::connect_with(&url, Some(&ca)).await.unwrap();
        let row = pg
            .client()
            .await
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "the pool's connection is not TLS");
        // The connection of its own (LISTEN) goes through TLS as well.
        let (client, connection) = pg.dedicated().connect().await.unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "the dedicated connection is not TLS");
        // A file with no certificate is refused, naming it.
        let empty = tempfile::NamedTempFile::new().unwrap();
        let refused = Pg::connect_with(&url, Some(empty.path()))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("no PEM certificate"),
            "{refused}"
        );
        drop(server);
    }
}
