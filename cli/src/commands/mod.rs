//! One module per subcommand.

pub mod admin;
pub mod artifacts;
pub mod cancel;
pub mod completions;
pub mod list;
pub mod logs;
pub mod open;
pub mod pythons;
pub mod rerun;
pub mod submit;
pub mod version;
pub mod wait;
pub mod whoami;
