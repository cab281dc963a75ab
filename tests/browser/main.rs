//! The pages in headless Chromium: the scenarios come in the next commit.
