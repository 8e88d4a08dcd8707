//! Sandbox tests (being written).
