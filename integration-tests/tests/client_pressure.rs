//! The client under pressure, as real processes: a site whose `max_model_bytes` is below the
//! task's checkpoint refuses it before allocating, leaves the attempt and backs off (with
//! jitter, growing) instead of checking in and downloading the model again at once, while the
//! round completes without it.

mod common;

use std::time::Duration;

use common::{Federation, Options};

const LONG: Duration = Duration::from_secs(240);

#[test]
fn a_model_over_max_model_bytes_is_refused_and_the_client_backs_off() {
    // The softmax model of 4 features and 3 classes is a few hundred bytes as safetensors.
    let mut fed = Federation::start(Options {
        rounds: 1,
        phase_ms: Some(5_000),
        client_toml: vec![(10, "max_model_bytes = 100".into())],
        ..Options::default()
    });
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    let small = fed.client(10).output();
    assert!(small.contains("above this site's max_model_bytes = 100"), "{small}");
    // Each refusal is followed by a pause (1 s, 2 s, 4 s… up to 30 s, jittered): over a round
    // that lasts at least the 5 s advertise deadline the site is waited for, only a handful.
    let left = small.matches("left the attempt; checking in again after a pause").count();
    println!("client 10 left {left} attempts");
    assert!((1..=8).contains(&left), "{left} attempts left:\n{small}");
    assert!(small.contains("0 rounds completed"), "{small}");
    // The round completed without it.
    for i in 1..=9 {
        let out = fed.client(i).output();
        assert!(out.contains("1 rounds completed"), "client {i}:\n{out}");
    }
}
