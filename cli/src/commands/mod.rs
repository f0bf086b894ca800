//! One module per subcommand.

pub mod admin;
pub mod artifacts;
pub mod cancel;
pub mod list;
pub mod pythons;
pub mod rerun;
pub mod submit;
pub mod wait;
pub mod whoami;
