//! Unit tests of the deterministic apply.
