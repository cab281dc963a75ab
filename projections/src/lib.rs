//! # projections: read models fed by the event history
//!
//! Reserved for the projections issue: `assessment_summary`, `test_statistics`, each with
//! its own tables and checkpoint in the global event order, updated in the same
//! transaction as its rows, and rebuilt beside the live version before a swap.
//!
//! The core already provides what they need: the `events` table has a global position,
//! the writing transaction id (PostgreSQL) and `recorded_at`, and events carry every value
//! a view shows, so a projection never reads anything but events.
#![forbid(unsafe_code)]
