//! The body of every error answer: `{"error": "<human message>"}`.

use serde::{Deserialize, Serialize};

/// What the server answers with any 4xx or 5xx status; the message is one line for people.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_field_named_error() {
        let body = ErrorBody {
            error: "job x not found".into(),
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json, r#"{"error":"job x not found"}"#);
        assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap(), body);
    }
}
