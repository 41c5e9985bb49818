//! What a new operator meets in the first hour, with real processes: a site whose trainer does
//! not fit the task's model stops at once with one clear error instead of retrying for ever.

mod common;

use std::time::Duration;

use common::{Federation, Options};

#[test]
fn a_trainer_that_does_not_fit_the_model_stops_the_client_with_one_error() {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    // Site 1 runs an MLP against the task's softmax model; the nine others fit it.
    fed.spawn_client(1, &["--model", "mlp"]);
    for i in 2..=10 {
        fed.spawn_client(i, &[]);
    }
    let misfit = fed.client(1);
    let ok = misfit.wait_exit(Duration::from_secs(120));
    let output = misfit.output();
    assert!(!ok, "the misfit client succeeded:\n{output}");
    assert_eq!(
        output.matches("does not fit this trainer").count(),
        1,
        "one error, no retry loop:\n{output}"
    );
    assert!(output.contains("--model"), "the error says what to check:\n{output}");
    assert!(!output.contains("left the attempt"), "{output}");
}
