//! The tests' helpers under their old flat names, for a test file that says `mod common;`:
//! they live in the `moltencore_testkit` crate (this folder), one module a concern.

pub(crate) use moltencore_testkit::flat::*;
