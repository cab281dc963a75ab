//! Integration tests: the real server on a random port, real WebSockets, real databases.
//! Every scenario runs against both SQLite and PostgreSQL.

mod helpers;

mod flow;
mod lifecycle;
mod bad_input;
mod limits;
