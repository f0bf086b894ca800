//! What a server is (`GET /v1/version`, `ci --version --verbose`).

use serde::{Deserialize, Serialize};

/// The version of the `/v1` API this build speaks. It grows when an endpoint or a field is
/// added; a change that breaks a client would be a new `/v2` instead.
pub const API_VERSION: u32 = 1;

/// The answer of `GET /v1/version` (no API key needed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VersionView {
    /// The server's own version (`ci-server --version`).
    pub version: String,
    /// Its [`API_VERSION`].
    pub api_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_stable() {
        let view = VersionView {
            version: "0.1.0".into(),
            api_version: API_VERSION,
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"version":"0.1.0","api_version":1}"#
        );
    }
}
