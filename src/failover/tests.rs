//! Scenario table for `decide`.
