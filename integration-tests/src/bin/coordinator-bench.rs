//! `coordinator-bench`: one round of a real coordinator and n real clients over mutual TLS on
//! loopback, against the limit `1.5 × (core in memory + loopback TLS transfer)` measured in
//! the same run. Prints one JSON object; see `fedsec_integration_tests::bench`.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use fedsec_crypto::GraphKind;
use fedsec_integration_tests::bench::{self, BenchOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphArg {
    Complete,
    Harary,
}

/// Measures the coordinator's overhead over the secure-aggregation core.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of clients n (all selected).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Vector length d (the model has d − 1 parameters).
    #[arg(long, default_value_t = 100_000)]
    dim: usize,
    /// Neighbour graph: complete (SecAgg) or harary (SecAgg+).
    #[arg(long, value_enum, default_value_t = GraphArg::Harary)]
    graph: GraphArg,
    /// Assumed dropout δ (sets k and t; nobody drops out).
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Seed of the updates and inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Call the gRPC health check every 10 ms during the round (on a thread and connection of
    /// its own) and report its latency under `health_probe`.
    #[arg(long)]
    probe_health: bool,
    /// Run the coordinator on a tokio runtime of its own, as in a process of its own (by
    /// default it shares the clients' runtime, whose threads their protocol work occupies).
    #[arg(long)]
    coordinator_own_runtime: bool,
    /// CI-sized smoke run: n = 12, d = 1000 (overrides --clients and --dim).
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let base = if args.quick {
        BenchOptions::quick()
    } else {
        BenchOptions { clients: args.clients, dim: args.dim, ..BenchOptions::full() }
    };
    let opts = BenchOptions {
        graph: match args.graph {
            GraphArg::Complete => GraphKind::Complete,
            GraphArg::Harary => GraphKind::Harary,
        },
        dropout: args.dropout,
        seed: args.seed,
        probe_health: args.probe_health,
        coordinator_own_runtime: args.coordinator_own_runtime,
        ..base
    };
    match bench::run(&opts) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coordinator-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
