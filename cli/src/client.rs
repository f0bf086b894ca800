//! The HTTP client of the `/v1` API: one clear line for every way a request can fail.

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Settings;

/// A job as the server describes it.
#[derive(Deserialize, Serialize, Debug, Clone)]
pub struct JobView {
    pub id: String,
    pub status: String,
    pub phase: Option<String>,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_secs: Option<f64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub queue_position: Option<usize>,
    #[serde(default)]
    pub log_bytes: u64,
    /// The log was removed after the server's retention period; the record stays.
    #[serde(default)]
    pub expired: bool,
}

impl JobView {
    pub fn is_terminal(&self) -> bool {
        !matches!(self.status.as_str(), "queued" | "running")
    }

    pub fn passed(&self) -> bool {
        self.status == "passed"
    }
}

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
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| self.describe(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("the server answered {status}: {}", body.trim()));
        Err(RequestError::Http(status.as_u16(), message))
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        resp.json()
            .await
            .map_err(|e| RequestError::Other(format!("the server sent a bad answer: {e}")))
    }

    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, RequestError> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        resp.json()
            .await
            .map_err(|e| RequestError::Other(format!("the server sent a bad answer: {e}")))
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        let resp = self.send(self.http.delete(self.url(path))).await?;
        resp.json()
            .await
            .map_err(|e| RequestError::Other(format!("the server sent a bad answer: {e}")))
    }

    pub async fn submit(
        &self,
        archive: Vec<u8>,
        timeout_secs: Option<u64>,
        pytest_args: &[String],
    ) -> Result<JobView, RequestError> {
        let mut req = self
            .http
            .post(self.url("/v1/jobs"))
            .header("content-type", "application/gzip")
            .body(archive);
        if let Some(t) = timeout_secs {
            req = req.query(&[("timeout_secs", t)]);
        }
        if !pytest_args.is_empty() {
            let json = serde_json::to_string(pytest_args).expect("strings serialize");
            req = req.query(&[("pytest_args", json)]);
        }
        let resp = self.send(req).await?;
        resp.json()
            .await
            .map_err(|e| RequestError::Other(format!("the server sent a bad answer: {e}")))
    }

    pub async fn job(&self, id: &str) -> Result<JobView, RequestError> {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// The log from byte `offset` on, as a live response.
    pub async fn log(&self, id: &str, offset: u64) -> Result<reqwest::Response, RequestError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/jobs/{id}/log")))
                .query(&[("offset", offset)]),
        )
        .await
    }
}

/// Turns a request error into the one line `ci` prints.
pub fn fail(e: RequestError) -> anyhow::Error {
    anyhow!(e)
}
