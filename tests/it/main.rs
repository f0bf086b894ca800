//! End-to-end tests: the real `ci-server`, the real `ci`, real containers and real pip.

mod errors;
mod sandbox;
mod seed;
