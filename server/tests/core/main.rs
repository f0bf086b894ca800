//! In-process tests of the router and the job manager against a fake executor: no root, no
//! registry, no containers, no sockets. `support` has the app and the fake.

mod auth;
mod cancel;
mod caps;
mod claim;
mod images;
mod projects;
mod pythons;
mod queue;
mod race;
mod report;
mod shutdown;
mod submit;
mod support;
