//! Pulls images from an OCI distribution registry, or imports them from files on this host
//! (OCI layouts, `oci-archive` and `docker-archive` tars, for air-gapped machines), and keeps
//! each as a cached, unpacked root filesystem for the runner to mount.
//!
//! [`Store::ensure_source`] is the entry point, for an [`ImageSource`] parsed from text
//! (`python:3.12-slim`, `oci-archive:/srv/py.tar:3.13`, ...). It answers from disk when the
//! reference was pulled before (no network at all) or the file was imported before and has
//! not changed since (the archive is not opened), and otherwise resolves the reference to the
//! host's image manifest, downloads or reads the blobs and verifies them by digest, and
//! unpacks the layers with [`unpack_layer`], which never writes outside its destination
//! whatever the layers contain. [`Store::list`] and [`Store::remove`] manage what is cached.

mod archive;
mod auth;
mod error;
mod manifest;
mod reference;
mod registry;
pub mod safe_path;
mod source;
mod store;
mod unpack;

pub use error::Error;
pub use manifest::ImageConfig;
pub use reference::{ImageRef, Reference, DOCKER_HUB};
pub use source::ImageSource;
pub use store::{Image, PullOptions, PullProgress, Store, StoredImage};
pub use unpack::unpack_layer;
