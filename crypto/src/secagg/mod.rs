//! SecAgg (Bonawitz et al., CCS 2017) and SecAgg+ (Bell et al., CCS 2020) as sans-IO state
//! machines: [`client::SecAggClient`] and [`server::SecAggServer`] exchange the plain messages
//! of [`messages`]; [`driver`] runs a whole round in memory.

pub mod client;
pub mod commitments;
pub mod complaints;
pub mod driver;
pub mod messages;
mod phase;
pub mod policy;
pub mod server;

pub use phase::Phase;
