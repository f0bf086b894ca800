//! Anonymous bearer tokens, the way Docker Hub and distribution's token auth hand them out.
//!
//! A registry that wants a token answers 401 with
//! `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`; the client asks the realm
//! for a token with those parameters and retries with `Authorization: Bearer <token>`.

/// The parameters of a `Bearer` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses a `WWW-Authenticate` value (RFC 7235 auth-params). Returns `None` for other schemes
/// such as `Basic`, which need credentials this client does not have.
pub fn parse_www_authenticate(header: &str) -> Option<BearerChallenge> {
    let header = header.trim_start();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service, mut scope) = (None, None, None);
    for (key, value) in parse_params(rest) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some(BearerChallenge {
        realm: realm.filter(|r| !r.is_empty())?,
        service,
        scope,
    })
}

/// `key=token` or `key="quoted, with \"escapes\""`, comma separated. A scope such as
/// `repository:x:pull,push` holds a comma inside quotes, so a plain split would be wrong.
fn parse_params(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some((key, rest)) = s.split_once('=') else {
            return out;
        };
        let key = key.trim().to_owned();
        let rest = rest.trim_start();
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            s = &quoted[end..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value.push_str(rest[..end].trim());
            s = &rest[end..];
        }
        out.push((key, value));
    }
}

/// The token endpoint answers `token` (distribution) or `access_token` (OAuth2 style).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<String> {
        self.token.or(self.access_token).filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(header: &str, expected: Option<(&str, Option<&str>, Option<&str>)>) {
        let want = expected.map(|(realm, service, scope)| BearerChallenge {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        });
        assert_eq!(parse_www_authenticate(header), want, "{header}");
    }

    #[test]
    fn parses_bearer_challenges() {
        check(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
            Some((
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/python:pull"),
            )),
        );
        check(
            r#"bearer realm="https://ghcr.io/token", service="ghcr.io", scope="repository:a/b:pull,push""#,
            Some((
                "https://ghcr.io/token",
                Some("ghcr.io"),
                Some("repository:a/b:pull,push"),
            )),
        );
        check(
            r#"Bearer realm="http://127.0.0.1:1/token""#,
            Some(("http://127.0.0.1:1/token", None, None)),
        );
        check(
            "Bearer realm=http://x/token,service=svc",
            Some(("http://x/token", Some("svc"), None)),
        );
        check(
            r#"Bearer service="s", Realm="r\"q""#,
            Some(("r\"q", Some("s"), None)),
        );
        check(
            r#"Bearer realm="unterminated"#,
            Some(("unterminated", None, None)),
        );
        check(r#"Basic realm="registry""#, None);
        check(r#"Bearer service="no realm""#, None);
        check("Bearer", None);
        check("", None);
    }

    #[test]
    fn token_fields() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token().as_deref(), Some("a"));
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"b","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token().as_deref(), Some("b"));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }
}
