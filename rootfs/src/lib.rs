//! Pulls images from an OCI distribution registry and keeps each as a cached, unpacked root
//! filesystem for the runner to mount.
//!
//! [`Store::ensure`] is the entry point: it answers from disk when the reference was pulled
//! before (no network at all), and otherwise resolves the reference to the host's image
//! manifest, downloads and verifies the blobs, and unpacks the layers with [`unpack_layer`],
//! which never writes outside its destination whatever the layers contain.

mod auth;
mod error;
mod manifest;
mod reference;
mod registry;
pub mod safe_path;
mod store;
mod unpack;

pub use error::Error;
pub use manifest::ImageConfig;
pub use reference::{ImageRef, Reference, DOCKER_HUB};
pub use store::{Image, PullOptions, Store};
pub use unpack::unpack_layer;
