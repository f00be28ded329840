//! Helpers shared by the end-to-end tests that need them (`mod common;`).

pub(crate) mod capture;
