//! Why a project's test environment cannot be decided.

/// One line each, naming the file and, where there is one, the key or the line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file whose content has the wrong shape, already phrased as `<file>: <what>`.
    #[error("{0}")]
    Invalid(String),
    #[error("{file} is not valid TOML: {message}")]
    Toml { file: String, message: String },
    /// A key of `[tool.ci]` / `ci.toml`; `file` is where it was read.
    #[error("{file}: {message}")]
    Config { file: &'static str, message: String },
    #[error("both pyproject.toml [tool.ci] and ci.toml configure ci: keep one of them")]
    BothConfigs,
    #[error("read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} is not UTF-8 text")]
    NotText { file: String },
    #[error("{file} is larger than {max_mib} MiB")]
    TooLarge { file: String, max_mib: u64 },
    /// `path`, named in `file`, would be read from outside the project (`..` above the
    /// root, an absolute path).
    #[error("{file}: {path} is outside the project")]
    Outside { file: String, path: String },
    #[error("{file} is a link to outside the project")]
    LinkOutside { file: String },
    /// `reference` (e.g. `-r base.txt`), written in `file`, names nothing in the project.
    #[error("{file}: {reference}: no such file in the project")]
    NotFound { file: String, reference: String },
    #[error("{file}: more than {max} requirement files are reached")]
    TooManyFiles { file: String, max: usize },
    /// `known` lists the groups there are, for the message.
    #[error("{file}: dependency group \"{group}\" is not in pyproject.toml [dependency-groups] ({known})")]
    UnknownGroup {
        file: String,
        group: String,
        known: String,
    },
    #[error("pyproject.toml [dependency-groups]: include-group cycle: {cycle}")]
    GroupCycle { cycle: String },
    /// `known` says where the extras were looked for and which there are.
    #[error("{file}: extra \"{extra}\" is not defined: {known}")]
    UnknownExtra {
        file: String,
        extra: String,
        known: String,
    },
}
