//! Users and API keys on the wire: what `/v1/whoami` and the `/v1/admin` endpoints answer, and
//! the bodies and queries they take.

use serde::{Deserialize, Serialize};

/// Role of a user.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    /// Its name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as clients see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub id: String,
    pub name: String,
    /// Identifies the user in the admin commands; lowercase.
    pub email: String,
    pub role: Role,
    pub active: bool,
    /// RFC 3339, UTC.
    pub created: String,
}

/// An API key as clients see it: never the key itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    /// Short public id, also the key's first characters after the prefix.
    pub id: String,
    pub name: String,
    pub user_email: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub last_used: Option<String>,
    pub revoked: bool,
}

/// The body of `POST /v1/admin/users`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    /// `admin` or `user` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The body of `POST /v1/admin/keys`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The email of the user the key is for.
    pub email: String,
    /// What the key is for.
    pub name: String,
}

/// A key just created: the only answer that carries the key itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub key: String,
}

/// The query of `GET /v1/admin/keys`: only the keys of the user with this email.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The body of `POST /v1/admin/images`: an image to serve from now on, read by the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportImage {
    /// `oci-archive:/ABS/PATH[:TAG]`, `oci:/ABS/DIR[:TAG]`, `docker-archive:/ABS/PATH[:NAME:TAG]`
    /// (a path on the server's host, read by the server's user), or a registry reference.
    pub source: String,
}

/// An image in the server's image cache (`GET /v1/admin/images`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageView {
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// The references and canonical source texts that point at it in the cache.
    pub refs: Vec<String>,
    /// What `--python` takes for it (`3.13`), once the server has asked the image.
    pub python: Option<String>,
    /// The interpreter's full version (`3.13.5`).
    pub version: Option<String>,
    /// The image text the server serves it under, if it is one of the server's Pythons.
    pub served_as: Option<String>,
    /// The server's default image.
    pub default: bool,
    /// Added at run time (`ci-server image import`), not by `--image`: it can be removed.
    pub imported: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_its_view_and_the_key() {
        let created = CreatedKey {
            view: KeyView {
                id: "0123abcd".into(),
                name: "laptop".into(),
                user_email: "bob@example.com".into(),
                created: "2026-01-02T03:04:05Z".into(),
                last_used: None,
                revoked: false,
            },
            key: "ci_0123abcd".into(),
        };
        let json = serde_json::to_string(&created).unwrap();
        assert_eq!(
            json,
            r#"{"id":"0123abcd","name":"laptop","user_email":"bob@example.com","created":"2026-01-02T03:04:05Z","last_used":null,"revoked":false,"key":"ci_0123abcd"}"#
        );
        assert_eq!(serde_json::from_str::<CreatedKey>(&json).unwrap(), created);
    }

    #[test]
    fn new_user_role_is_optional_and_nothing_else_is_taken() {
        let user: NewUser =
            serde_json::from_str(r#"{"name":"Bob","email":"bob@example.com"}"#).unwrap();
        assert_eq!(user.role, None);
        let admin: NewUser =
            serde_json::from_str(r#"{"name":"A","email":"a@b.c","role":"admin"}"#).unwrap();
        assert_eq!(admin.role, Some(Role::Admin));
        assert!(serde_json::from_str::<NewUser>(r#"{"name":"A","email":"a@b.c","x":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&admin).unwrap(),
            r#"{"name":"A","email":"a@b.c","role":"admin"}"#
        );
    }

    #[test]
    fn image_field_names_are_stable() {
        let view = ImageView {
            digest: "sha256:ab".into(),
            refs: vec!["oci-archive:/srv/py.tar:3.13".into()],
            python: Some("3.13".into()),
            version: Some("3.13.5".into()),
            served_as: Some("oci-archive:/srv/py.tar:3.13".into()),
            default: false,
            imported: true,
        };
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(
            json,
            r#"{"digest":"sha256:ab","refs":["oci-archive:/srv/py.tar:3.13"],"python":"3.13","version":"3.13.5","served_as":"oci-archive:/srv/py.tar:3.13","default":false,"imported":true}"#
        );
        assert_eq!(serde_json::from_str::<ImageView>(&json).unwrap(), view);
        let import: ImportImage = serde_json::from_str(r#"{"source":"oci:/x"}"#).unwrap();
        assert_eq!(import.source, "oci:/x");
        assert!(serde_json::from_str::<ImportImage>(r#"{"source":"oci:/x","y":1}"#).is_err());
    }
}
