//! The commands besides `gsinfer run`, and the code only they use:
//! `gsinfer engine build|inspect` ([`engine`]), `gsinfer replay` and its
//! serial encoder ([`replay`]), `gsinfer bench` ([`bench`](mod@bench)) and
//! `gsinfer selftest` ([`selftest`]). `gsinfer eval` has its own room,
//! [`crate::eval`], with the data set and the detection metrics.

pub mod bench;
pub mod engine;
pub mod replay;
pub mod selftest;
