//! Rebuilds the server when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations/` directories when the crate compiles, and cargo does not otherwise look
//! there, so a new migration file alone would leave the old set in the binary.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
