//! The HTTP client of the `/v1` API: one clear line for every way a request can fail.

use anyhow::{anyhow, Context};
use ci_protocol::{ErrorBody, JobView, LogQuery, SubmitQuery, TestReport};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Settings;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// Why a request failed; `Http` keeps the status so callers can tell 404 from the rest.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot reach the CI server at {base}: {detail} (is it running? set --server or CI_SERVER_URL)")]
    Connect { base: String, detail: String },
    /// The status and the server's message; only the message is shown.
    #[error("{1}")]
    Http(u16, String),
    #[error("{0}")]
    Other(String),
}

impl RequestError {
    /// Worth retrying: the server may come back.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Connect { .. } | RequestError::Other(_) => true,
            RequestError::Http(status, _) => *status >= 500,
        }
    }
}

impl Client {
    pub fn new(settings: &Settings) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("ci/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            base: settings.server.clone(),
            key: settings.api_key.clone(),
        })
    }

    /// The server's URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The web page of job `id`.
    pub fn job_url(&self, id: &str) -> String {
        format!("{}/jobs/{id}", self.base)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn describe(&self, e: reqwest::Error) -> RequestError {
        if e.is_connect() || e.is_timeout() {
            // The innermost cause says what happened ("Connection refused (os error 111)").
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = s.to_string();
                source = s.source();
            }
            RequestError::Connect {
                base: self.base.clone(),
                detail,
            }
        } else {
            RequestError::Other(format!("request to {} failed: {e}", self.base))
        }
    }

    /// Sends a request and turns non-2xx answers into their message.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RequestError> {
        // No key for what needs none (`GET /v1/version`).
        let req = match self.key.is_empty() {
            true => req,
            false => req.bearer_auth(&self.key),
        };
        let resp = req.send().await.map_err(|e| self.describe(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&body)
            .ok()
            .map(|b| b.error)
            .unwrap_or_else(|| format!("the server answered {status}: {}", body.trim()));
        Err(RequestError::Http(status.as_u16(), message))
    }

    /// Sends a request and reads the JSON answer.
    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, RequestError> {
        let resp = self.send(req).await?;
        resp.json()
            .await
            .map_err(|e| RequestError::Other(format!("the server sent a bad answer: {e}")))
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        self.json(self.http.get(self.url(path))).await
    }

    /// `GET path?query`, with the query one of `ci_protocol`'s query types.
    pub async fn get_json_with<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, RequestError> {
        self.json(self.http.get(self.url(path)).query(query)).await
    }

    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, RequestError> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        self.json(self.http.delete(self.url(path))).await
    }

    /// `POST /v1/jobs` with the packed project; `query` carries the timeout, the extra pytest
    /// arguments and, for a rerun, the job whose failed tests to run (`failed_from`).
    pub async fn submit(
        &self,
        archive: Vec<u8>,
        query: &SubmitQuery,
    ) -> Result<JobView, RequestError> {
        let req = self
            .http
            .post(self.url("/v1/jobs"))
            .header("content-type", "application/gzip")
            .query(query)
            .body(archive);
        self.json(req).await
    }

    pub async fn job(&self, id: &str) -> Result<JobView, RequestError> {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// The test report of a finished job: its counts and the tests that failed or errored.
    /// A 404 (no report: the tests did not end, or wrote none) keeps its status.
    pub async fn report(&self, id: &str) -> Result<TestReport, RequestError> {
        self.get_json(&format!("/v1/jobs/{id}/report")).await
    }

    /// Streams the tar.gz of the files a job's tests kept in `/artifacts` into `out`, chunk by
    /// chunk as it arrives; returns the bytes written. A 404 (the job kept none) keeps its
    /// status.
    pub async fn artifacts(
        &self,
        id: &str,
        out: &mut impl std::io::Write,
    ) -> Result<u64, RequestError> {
        let resp = self
            .send(self.http.get(self.url(&format!("/v1/jobs/{id}/artifacts"))))
            .await?;
        let mut body = resp.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                RequestError::Other(format!("the download of the artifacts broke off: {e}"))
            })?;
            out.write_all(&chunk).map_err(|e| {
                RequestError::Other(format!("cannot write the artifacts' archive: {e}"))
            })?;
            written += chunk.len() as u64;
        }
        out.flush().map_err(|e| {
            RequestError::Other(format!("cannot write the artifacts' archive: {e}"))
        })?;
        Ok(written)
    }

    /// The log from byte `offset` on, as a live response.
    pub async fn log(&self, id: &str, offset: u64) -> Result<reqwest::Response, RequestError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/jobs/{id}/log")))
                .query(&LogQuery { offset }),
        )
        .await
    }
}

/// Turns a request error into the one line `ci` prints.
pub fn fail(e: RequestError) -> anyhow::Error {
    anyhow!(e)
}
