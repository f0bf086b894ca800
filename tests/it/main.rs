//! End-to-end tests: the real `ci-server`, the real `ci`, real containers and real pip.

mod abuse_connections;
mod artifacts;
mod bytecode;
mod cli;
mod errors;
mod fairness;
mod hostile;
mod images;
mod install_network;
mod lifecycle;
mod projects;
mod pythons;
mod quotas;
mod report;
mod restart;
mod resume;
mod retention;
mod rootless;
mod sandbox;
mod seed;
mod service;
mod shards;
mod snapshots;
mod uploads;
mod users;
mod web;
