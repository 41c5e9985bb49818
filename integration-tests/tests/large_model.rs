//! A model of 100 million parameters goes down to real client processes and comes back up as
//! masked inputs without error, and the coordinator's memory is bounded by its in-flight limit,
//! not by the number of uploaders.
//!
//! Run by hand (each client process needs over 2 GB, the coordinator about 3 GB; minutes):
//!
//! ```sh
//! cargo test --release -p fedsec-integration-tests --test large_model -- --ignored --nocapture
//! ```

mod common;

use std::time::Duration;

use common::{Federation, MAX_EXAMPLES, Options, SERVER_LR};
use fedsec_crypto::quant::QuantParams;
use fedsec_wire::model::Model;

const PARAMETERS: usize = 100_000_000;
/// What every client's trainer returns for every parameter.
const UPDATE: f32 = 0.25;
/// Bytes of one masked input.
const UPLOAD_BYTES: u64 = 4 * PARAMETERS as u64;
const LONG: Duration = Duration::from_secs(3600);

/// One round of `uploaders` clients on a zero model of [`PARAMETERS`] values, one upload
/// received at a time. Returns the coordinator's peak RSS in bytes.
fn one_round(uploaders: usize) -> u64 {
    let mut fed = Federation::start(Options {
        clients: uploaders,
        rounds: 1,
        extra_certs: 0,
        model_parameters: Some(PARAMETERS),
        min_clients: uploaders,
        graph: "complete",
        dropout: 0.0,
        upload_chunk_words: 1 << 16,
        max_uploads_in_flight: Some(1),
        masked_input_ms: 1_800_000,
        phase_ms: Some(1_800_000),
        client_min_clients: Some(uploaders),
        ..Options::default()
    });
    for i in 1..=uploaders {
        fed.spawn_constant_client(i, UPDATE);
    }
    fed.wait_clients(LONG);
    let peak = fed.coordinator_peak_rss();

    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len(), 1, "{}", fed.coordinator.output());
    assert_eq!(completed[0]["detail"]["participants"], uploaders as u64, "every upload was summed");
    for p in fed.clients.iter().flatten() {
        assert!(p.output().contains("1 rounds completed"), "{}", p.output());
    }

    // Every value moved from 0 by η × the constant, within the quantization's error.
    let quant = QuantParams::for_clients(uploaders, common::CLIP, MAX_EXAMPLES).unwrap();
    let tolerance = (2.0 / quant.value_scale + 2.0 * f64::from(UPDATE) / quant.weight_scale) as f32
        + f32::EPSILON;
    let want = SERVER_LR * UPDATE;
    let after = Model::from_safetensors(&fed.checkpoint(1)).unwrap();
    let values = &after.get("weights").expect("the model's one tensor").values;
    assert_eq!(values.len(), PARAMETERS);
    let worst = values.iter().map(|v| (v - want).abs()).fold(0.0f32, f32::max);
    println!("{uploaders} uploaders: largest error {worst:e} (tolerance {tolerance:e})");
    assert!(worst <= tolerance, "a value is {worst} away from {want}");
    peak
}

#[test]
#[ignore = "100M parameters: several GB of memory and minutes; run by hand"]
fn a_100m_parameter_model_round_trips_and_memory_does_not_grow_with_uploaders() {
    let two = one_round(2);
    let four = one_round(4);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "coordinator peak RSS (VmHWM), max_uploads_in_flight = 1: 2 uploaders {:.0} MiB, \
         4 uploaders {:.0} MiB; one upload is {:.0} MiB",
        mb(two),
        mb(four),
        mb(UPLOAD_BYTES)
    );
    assert!(
        two.abs_diff(four) < UPLOAD_BYTES,
        "peak RSS differs by {:.0} MiB between 2 and 4 uploaders: more than one upload",
        mb(two.abs_diff(four))
    );
}
