//! Integration tests: the real server on a random port, real WebSockets, real databases.
//! Every scenario runs against both SQLite and PostgreSQL.

mod helpers;

mod accommodations;
mod ai;
mod ai_adaptive;
mod ai_feedback;
mod audit;
mod bad_input;
mod cli;
mod concurrency;
mod durability;
mod flow;
mod http_api;
mod jobs;
mod lifecycle;
mod limits;
mod nginx;
mod nodes;
mod openapi;
mod pages;
mod projections;
mod snapshots;
mod store;
