//! llep-trace: recorded MoE routing -> traces -> plans -> simulated and
//! measured EP against Least-Loaded EP -> reports and tuning advice.
//!
//! The flow, module by module:
//! `capture` (dumps -> [`trace`]) -> [`workload`] (what a command runs on,
//! resolved once) -> [`plan`] (the one planner and its gate) ->
//! [`sim`] (cost model) and [`gpu`] (real replay) -> [`results`] (one schema
//! for simulated and measured rows) -> [`tune`] and [`report`].

pub mod capture;
pub mod env;
pub mod gpu;
pub mod io;
pub mod plan;
pub mod progress;
pub mod report;
pub mod results;
pub mod sim;
pub mod trace;
pub mod tune;
pub mod workload;
