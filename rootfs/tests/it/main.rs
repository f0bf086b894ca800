//! Integration tests of `ci-rootfs`: pulls through `Store` from registries on loopback.

mod fake_registry;
mod pull;
mod real_registry;
