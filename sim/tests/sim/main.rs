//! The simulation harness end to end (one test binary, to keep link times down).

mod cli;
mod memory;
