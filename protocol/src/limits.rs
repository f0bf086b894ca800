//! Limits the client and the server share.

/// The server's default cap on a compressed project upload (`ci-server serve
/// --max-upload-size`); `ci` refuses to send a larger archive.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 100 << 20;
