//! The daemon against the real in-process target: checkers, prioritizers, damping,
//! reconfigure, start-up, control plane, metrics.

mod bindings;
mod checkers;
mod common;
mod config_errors;
mod damping;
mod hedge;
mod live_changes;
mod observe;
mod outcomes;
mod persist;
mod prio;
mod reconfigure;
mod socket;
mod startup;
mod views;
