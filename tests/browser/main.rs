//! The pages in a real browser: headless Chromium (Debian's `chromium`), driven through
//! `chromedriver` with fantoccini, against the real `assessd` binary in development mode.
//! Each scenario saves a screenshot of each step under `target/browser-screenshots/`.
//!
//! Without Chromium and chromedriver installed each scenario prints a SKIPPED line and
//! passes, unless `ASSESSD_REQUIRE_BROWSER=1` (as `.ci/run` sets), which makes that a
//! failure. The scenarios run one at a time.

mod harness;
mod staff;
mod taker;
