//! The HTTP client of the `/v1` API: one clear line for every way a request can fail.

use anyhow::{anyhow, Context};
use ci_protocol::{ErrorBody, JobView, LogQuery, SubmitQuery};
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

    pub async fn submit(
        &self,
        archive: Vec<u8>,
        timeout_secs: Option<u64>,
        pytest_args: &[String],
    ) -> Result<JobView, RequestError> {
        let req = self
            .http
            .post(self.url("/v1/jobs"))
            .header("content-type", "application/gzip")
            .query(&SubmitQuery::new(timeout_secs, pytest_args))
            .body(archive);
        self.json(req).await
    }

    pub async fn job(&self, id: &str) -> Result<JobView, RequestError> {
        self.get_json(&format!("/v1/jobs/{id}")).await
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
