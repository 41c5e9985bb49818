//! # fedsec-sim
//!
//! The simulation harness of fedsec: the real coordinator and N real clients on one machine,
//! on small real datasets shipped in the repository, with dropouts, stragglers and latency
//! injected from a seed; it reports accuracy, loss, phase timings and bytes per round for the
//! secure run and for a plaintext baseline of the same training, on the terminal and as
//! JSON, CSV and plots.
//!
//! - [`experiment`]: the settings and their checks; [`datasets`] and [`split`]: the data.
//! - [`schedule`]: the faults, fixed in advance from the seed.
//! - [`grpc`]: the run over real gRPC and mutual TLS on loopback; [`memory`]: the same engine
//!   and client protocol code without sockets, on a virtual clock.
//! - [`baseline`]: the same federated averaging in the clear, and how far the two may differ.
//! - [`report`]: `report.json`, `rounds.csv`, the summary table and the plots.

#![forbid(unsafe_code)]

pub mod baseline;
pub mod datasets;
pub mod experiment;
pub mod grpc;
pub mod memory;
pub mod report;
pub mod run;
pub mod schedule;
pub mod split;

use std::collections::BTreeMap;

use fedsec_client::{Evaluation, Trainer};
use indicatif::ProgressBar;

use crate::experiment::{Experiment, SimError, Transport};
use crate::report::Report;

fn evaluate_all(
    evaluator: &mut dyn Trainer,
    models: &[fedsec_wire::model::Model],
) -> Result<Vec<Evaluation>, SimError> {
    models.iter().map(|m| evaluator.evaluate(m)?.ok_or(SimError::NoTestSet)).collect()
}

/// Runs an experiment: the secure run, the plaintext baseline (if asked for) and the
/// centralized reference, evaluated after every round on the test set.
pub fn simulate(exp: &Experiment, progress: &ProgressBar) -> Result<Report, SimError> {
    let p = exp.prepare()?;
    progress.set_length(exp.rounds);
    let run = match exp.transport {
        Transport::Grpc => grpc::run(exp, &p, progress)?,
        Transport::Memory => memory::run(exp, &p, progress)?,
    };
    progress.finish_and_clear();
    let mut evaluator = exp.evaluator(&p)?;
    let secure = evaluate_all(evaluator.as_mut(), &run.models)?;
    let plaintext = if exp.plaintext_baseline {
        let participants: Vec<Vec<usize>> =
            run.completed().map(|a| a.participants.clone()).collect();
        let mut trainers: BTreeMap<usize, Box<dyn Trainer>> = BTreeMap::new();
        let models = baseline::replay(
            &p.initial_model,
            &participants,
            |i, model| {
                let trainer = match trainers.entry(i) {
                    std::collections::btree_map::Entry::Occupied(t) => t.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(exp.trainer(&p, i)?),
                };
                let fit = trainer.fit(model)?;
                Ok(baseline::Contribution { update: fit.update, examples: fit.examples })
            },
            exp.clip,
            p.max_examples,
            exp.server_learning_rate,
        )?;
        Some(evaluate_all(evaluator.as_mut(), &models)?)
    } else {
        None
    };
    let centralized = centralized(exp, &p)?;
    Ok(report::build(exp, &p, &run, &secure, plaintext.as_deref(), Some(&centralized)))
}

/// The same model trained with all the training data in one place, for as many epochs as
/// a client trains over the whole run (at most 50): the reference for the federated runs.
fn centralized(exp: &Experiment, p: &experiment::Prepared) -> Result<Evaluation, SimError> {
    use fedsec_client::trainers::{Mlp, SoftmaxRegression, TrainOptions};
    let epochs = (exp.epochs as u64 * exp.rounds).clamp(1, 50) as usize;
    let options = TrainOptions {
        epochs,
        learning_rate: exp.learning_rate,
        batch_size: exp.batch_size,
        l2: 0.0,
        seed: exp.seed,
    };
    let (train, test) = (p.train.clone(), Some(p.test.clone()));
    let mut trainer: Box<dyn Trainer> = match exp.model {
        experiment::ModelKind::Softmax => {
            Box::new(SoftmaxRegression::new(train, test, p.classes, options)?)
        }
        experiment::ModelKind::Mlp => {
            Box::new(Mlp::new(train, test, exp.hidden, p.classes, options)?)
        }
    };
    let fit = trainer.fit(&p.initial_model)?;
    let theta: Vec<f32> =
        p.initial_model.flatten().iter().zip(&fit.update).map(|(t, u)| t + u).collect();
    let model = p.initial_model.with_flat(&theta)?;
    trainer.evaluate(&model)?.ok_or(SimError::NoTestSet)
}
