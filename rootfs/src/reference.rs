//! Image references (`python:3.12-slim`, `127.0.0.1:5000/x/y@sha256:...`) parsed by Docker's rules.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Docker Hub's registry as clients reach it; `docker.io` is only a name people write.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed image reference, normalized the way Docker normalizes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`, with Docker Hub's aliases replaced by [`DOCKER_HUB`].
    pub registry: String,
    /// The repository path, e.g. `library/python`.
    pub repository: String,
    pub reference: Reference,
}

/// Which manifest of the repository is meant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    /// `sha256:<64 hex>`; the only algorithm accepted, because digests become file names.
    Digest(String),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(s) | Reference::Digest(s) => s,
        }
    }
}

impl ImageRef {
    /// The `host` part of the registry, without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        split_host(&self.registry)
    }

    /// Registries on loopback are spoken to in plain http, like Docker does.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.host())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match &self.reference {
            Reference::Tag(tag) => write!(f, ":{tag}"),
            Reference::Digest(digest) => write!(f, "@{digest}"),
        }
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::Parse {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, digest) = match input.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (input, None),
        };
        // Docker's rule (distribution/reference `splitDockerDomain`): the first path component
        // is a registry only if it looks like a host: has a dot or a port, is `localhost`, or
        // has uppercase letters (which repositories cannot).
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => ("docker.io", name),
        };
        // The port's colon went with the registry, so a colon left here starts the tag.
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repository, tag)) => (repository, Some(tag)),
            None => (rest, None),
        };
        let registry = match registry {
            "docker.io" | "index.docker.io" | DOCKER_HUB => DOCKER_HUB,
            other => other,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };

        if !valid_registry(registry) {
            return Err(fail("the registry is not a valid host[:port]"));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(fail(
                "the repository must be lowercase letters, digits and separators",
            ));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(fail(
                    "the tag must be up to 128 letters, digits, `_`, `.` or `-`",
                ));
            }
        }
        let reference = match (digest, tag) {
            // `name:tag@digest` is allowed; the digest is what is pulled, as in Docker.
            (Some(digest), _) => {
                validate_digest(digest).map_err(|_| fail("the digest must be sha256:<64 hex>"))?;
                Reference::Digest(digest.to_owned())
            }
            (None, Some(tag)) => Reference::Tag(tag.to_owned()),
            (None, None) => Reference::Tag("latest".to_owned()),
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            reference,
        })
    }
}

/// Checks a digest before it is used in a URL or as a file name: a registry could otherwise
/// hand us `sha256:../../x`.
pub(crate) fn validate_digest(digest: &str) -> Result<&str, Error> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(Error::InvalidDigest {
            digest: digest.to_owned(),
        }),
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (None, after.strip_prefix(':'))
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    let host_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !h.starts_with(['.', '-'])
    });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-` (distribution's path-component).
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    alnum(first)
        && alnum(last)
        && bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && !component.contains("..")
        && !component.contains("___")
        && !component.contains("._")
        && !component.contains("_.")
}

fn valid_tag(tag: &str) -> bool {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && ok(&bytes[0])
        && bytes.iter().all(|b| ok(b) || matches!(b, b'.' | b'-'))
}

/// `host[:port]` or `[v6]:port` -> host.
pub(crate) fn split_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(addr, _)| addr);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A reference as a single file name: every byte outside `[A-Za-z0-9._-]` becomes `%XX`, so
/// `/` cannot appear and the mapping cannot collide.
pub(crate) fn escape_for_file_name(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len() + 16);
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reference [`escape_for_file_name`] made this name from; `None` if it made none such.
pub(crate) fn unescape_file_name(name: &str) -> Option<String> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[track_caller]
    fn check(input: &str, expected: Option<&str>) {
        let parsed = input.parse::<ImageRef>().map(|r| r.to_string());
        match (parsed, expected) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{input}"),
            (Err(_), None) => {}
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_like_docker() {
        check(
            "python:3.12-slim",
            Some("registry-1.docker.io/library/python:3.12-slim"),
        );
        check("python", Some("registry-1.docker.io/library/python:latest"));
        check(
            "docker.io/python",
            Some("registry-1.docker.io/library/python:latest"),
        );
        check(
            "index.docker.io/library/python:3",
            Some("registry-1.docker.io/library/python:3"),
        );
        check(
            "bitnami/redis:7",
            Some("registry-1.docker.io/bitnami/redis:7"),
        );
        check(
            "127.0.0.1:5000/library/python:3.11-slim",
            Some("127.0.0.1:5000/library/python:3.11-slim"),
        );
        check("localhost/x", Some("localhost/x:latest"));
        check("localhost:5000/x/y", Some("localhost:5000/x/y:latest"));
        check(
            &format!("localhost:5000/x/y@{D}"),
            Some(&format!("localhost:5000/x/y@{D}")),
        );
        check(
            &format!("python:3.12@{D}"),
            Some(&format!("registry-1.docker.io/library/python@{D}")),
        );
        check("[::1]:5000/a/b:c", Some("[::1]:5000/a/b:c"));
        check(
            "ghcr.io/astral-sh/uv:0.5.0",
            Some("ghcr.io/astral-sh/uv:0.5.0"),
        );
        check("a.b/c__d/e-f.g:T_1.x-y", Some("a.b/c__d/e-f.g:T_1.x-y"));
        check(
            "registry-1.docker.io/library/python:3.12-slim",
            Some("registry-1.docker.io/library/python:3.12-slim"),
        );

        check("", None);
        check("Python", None);
        check("python:", None);
        check("python:-x", None);
        check("python@sha256:abc", None);
        check("python@md5:0123456789abcdef0123456789abcdef", None);
        check(&format!("python@sha256:{}", "A".repeat(64)), None);
        check("x/../y", None);
        check("x//y", None);
        check("host:port/x", None);
        check("127.0.0.1:5000/", None);
        check("a b", None);
        check(&format!("python:{}", "t".repeat(129)), None);
    }

    #[test]
    fn fields() {
        let r: ImageRef = "127.0.0.1:5000/library/python:3.11-slim".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.reference, Reference::Tag("3.11-slim".into()));
        assert!(r.is_loopback());
        let r: ImageRef = format!("localhost:5000/x/y@{D}").parse().unwrap();
        assert_eq!(r.reference, Reference::Digest(D.into()));
        assert_eq!(r.host(), "localhost");
        assert!(r.is_loopback());
        let r: ImageRef = "[::1]:5000/a".parse().unwrap();
        assert_eq!(r.host(), "::1");
        assert!(r.is_loopback());
        let r: ImageRef = "python".parse().unwrap();
        assert_eq!(r.host(), DOCKER_HUB);
        assert!(!r.is_loopback());
        assert!(!"10.0.0.1:5000/a".parse::<ImageRef>().unwrap().is_loopback());
        assert!("127.1.2.3:5000/a"
            .parse::<ImageRef>()
            .unwrap()
            .is_loopback());
    }

    #[test]
    fn escaped_file_names_are_single_safe_components() {
        assert_eq!(
            escape_for_file_name("127.0.0.1:5000/library/python:3.11-slim"),
            "127.0.0.1%3A5000%2Flibrary%2Fpython%3A3.11-slim"
        );
        assert_eq!(escape_for_file_name("a/../b"), "a%2F..%2Fb");
        for reference in [
            "127.0.0.1:5000/library/python:3.11-slim",
            "oci-archive:/srv/py thon.tar:3.13",
            "docker-archive:/é.tar",
        ] {
            let escaped = escape_for_file_name(reference);
            assert_eq!(unescape_file_name(&escaped).as_deref(), Some(reference));
        }
        assert_eq!(unescape_file_name("a%2"), None);
    }
}
