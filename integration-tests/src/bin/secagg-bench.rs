//! `secagg-bench`: one full secure-aggregation round in memory, timed, against the limit the
//! same machine's measured primitives imply.
//!
//! The dropouts happen after ShareKeys, so they cost the server reconstruction of their mask
//! keys and regeneration of their pairwise masks. The bench asserts that the server did the
//! minimum work: mask words = d·(|U3| + Σ_{v∈U2∖U3} |N(v)∩U3|) and key agreements =
//! Σ_{v∈U2∖U3} |N(v)∩U3|, and that the unmasked sum equals the clear sum bit for bit.
//!
//! (k, t) come from the parameter finder (`fedsec_crypto::params`). `--degree` and
//! `--threshold` replace them for comparisons with other systems at their parameters; a pair
//! that misses the finder's targets (`params::check`) is refused with exit code 2 unless
//! `--unsafe-params` is given. It lives here, not in the IO-free core, because it needs a
//! command line and JSON.

// The report is one `json!` object of some fifty fields.
#![recursion_limit = "256"]

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{CryptoRng, Rng, SeedableRng};
use rayon::prelude::*;

use fedsec_crypto::Error;
use fedsec_crypto::context::{AdversaryClass, GraphKind, PPM, RoundPlan};
use fedsec_crypto::ids::{CheckpointHash, ClientId};
use fedsec_crypto::kernel::{Kernel, MASKS_PER_PASS, Sign};
use fedsec_crypto::keys::SecretScalar;
use fedsec_crypto::params::{self, GraphParams};
use fedsec_crypto::prg::MaskSeed;
use fedsec_crypto::rng::os_rng;
use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient, hazmat};
use fedsec_crypto::secagg::driver::{make_plan, stand_in_trained_on};
use fedsec_crypto::secagg::messages::encode;
use fedsec_crypto::secagg::server::{CheckedShareKeys, SecAggServer};
use fedsec_crypto::shamir::{self, LagrangeCache};
use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphArg {
    Complete,
    Harary,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AdversaryArg {
    Curious,
    SemiMalicious,
}

/// Runs one SecAgg / SecAgg+ round in memory and reports timings against the measured limit.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of selected clients n.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Vector length d (u32 words).
    #[arg(long, default_value_t = 100_000)]
    dim: u32,
    /// Fraction of clients that drop out after ShareKeys (also the plan's assumed dropout δ).
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Neighbour graph: complete (SecAgg) or harary (SecAgg+).
    #[arg(long, value_enum, default_value_t = GraphArg::Harary)]
    graph: GraphArg,
    /// Assumed corrupt fraction γ.
    #[arg(long, default_value_t = 0.05)]
    corrupt: f64,
    /// Adversary class the parameters are chosen against.
    #[arg(long, value_enum, default_value_t = AdversaryArg::SemiMalicious)]
    adversary: AdversaryArg,
    /// Degree k (neighbours, self excluded) instead of the finder's; the threshold defaults to
    /// the least one that meets the targets at this degree.
    #[arg(long)]
    degree: Option<u32>,
    /// Shamir threshold t instead of the finder's.
    #[arg(long)]
    threshold: Option<u32>,
    /// Run at --degree/--threshold even where they miss the finder's privacy or correctness
    /// targets (comparisons with other systems at their parameters; such a round is not private).
    #[arg(long)]
    unsafe_params: bool,
    /// Threads for the server's vector kernel.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print only the chosen (k, t) and exit.
    #[arg(long)]
    params_only: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed for the inputs and the dropout choice (keys always come from the OS RNG).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Why the bench stopped: refused arguments (exit code 2) or a failed round (exit code 1).
#[derive(Debug)]
enum Failure {
    Refused(String),
    Failed(String),
}

fn failed(e: impl ToString) -> Failure {
    Failure::Failed(e.to_string())
}

fn refused(e: impl ToString) -> Failure {
    Failure::Refused(e.to_string())
}

fn ppm(x: f64) -> Result<u32, Failure> {
    if !(0.0..1.0).contains(&x) {
        return Err(refused(format!("{x} is not a fraction in [0, 1)")));
    }
    Ok((x * f64::from(PPM)).round() as u32)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            eprintln!("secagg-bench: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("secagg-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The input of client i: deterministic from the seed, so it need not be kept in memory.
fn input_of(seed: u64, i: usize, dim: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..dim).map(|_| rng.next_u32()).collect()
}

/// The round's parameters: the finder's (first), and the ones the round runs at (second) —
/// the finder's, or the overrides when they meet its targets or `--unsafe-params` is given.
fn parameters(
    args: &Args,
    graph: GraphKind,
    adversary: AdversaryClass,
    dropout_ppm: u32,
    corrupt_ppm: u32,
) -> Result<(GraphParams, GraphParams), Failure> {
    let n = args.clients;
    let finder = params::choose(graph, n, dropout_ppm, corrupt_ppm, adversary).map_err(refused)?;
    if args.degree.is_none() && args.threshold.is_none() {
        return Ok((finder, finder));
    }
    let degree = args.degree.unwrap_or(finder.degree);
    let threshold = match args.threshold {
        Some(t) => t,
        None => {
            match params::least_threshold(graph, n, dropout_ppm, corrupt_ppm, adversary, degree) {
                Ok(t) => t,
                Err(Error::NoParameters(why)) => {
                    return Err(refused(format!(
                        "degree {degree} does not meet the targets at any threshold: {why}; to \
                         run at it anyway, for a comparison only, give --threshold{}",
                        if args.unsafe_params { "" } else { " and --unsafe-params" }
                    )));
                }
                Err(e) => return Err(refused(e)),
            }
        }
    };
    let chosen = GraphParams { degree, threshold };
    match params::check(graph, n, dropout_ppm, corrupt_ppm, adversary, chosen) {
        Ok(()) => Ok((finder, chosen)),
        Err(Error::ParametersMissTargets { .. }) if args.unsafe_params => Ok((finder, chosen)),
        Err(e @ Error::ParametersMissTargets { .. }) => Err(refused(format!(
            "{e} (the parameter finder chooses degree {} and threshold {} for these n, δ, γ and \
             adversary class); pass --unsafe-params to run at these parameters anyway, for a \
             comparison only: such a round may not have the privacy (or the tolerance of \
             dropouts) the targets promise",
            finder.degree, finder.threshold
        ))),
        // No plan can have them, --unsafe-params or not.
        Err(e) => Err(refused(e)),
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let graph = match args.graph {
        GraphArg::Complete => GraphKind::Complete,
        GraphArg::Harary => GraphKind::Harary,
    };
    let adversary = match args.adversary {
        AdversaryArg::Curious => AdversaryClass::Curious,
        AdversaryArg::SemiMalicious => AdversaryClass::SemiMalicious,
    };
    let (dropout_ppm, corrupt_ppm) = (ppm(args.dropout)?, ppm(args.corrupt)?);
    let (finder, chosen) = parameters(args, graph, adversary, dropout_ppm, corrupt_ppm)?;
    let meets_targets =
        params::check(graph, args.clients, dropout_ppm, corrupt_ppm, adversary, chosen).is_ok();
    if args.params_only {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"degree": chosen.degree, "threshold": chosen.threshold})
            );
        } else {
            println!("degree k = {}, threshold t = {}", chosen.degree, chosen.threshold);
        }
        return Ok(());
    }

    let n = args.clients;
    let d = args.dim as usize;
    let mut os = os_rng();
    let mut seeded = StdRng::seed_from_u64(args.seed);
    let identities: Vec<Arc<IdentityKey>> =
        (0..n).map(|_| Arc::new(IdentityKey::generate(&mut os))).collect();
    let mut ids: Vec<ClientId> = identities.iter().map(|k| k.id()).collect();
    let checkpoint = CheckpointHash([7; 32]);
    let plan = make_plan(
        &mut ids,
        graph,
        dropout_ppm,
        corrupt_ppm,
        adversary,
        args.dim,
        checkpoint,
        &mut os,
    )
    .map_err(refused)?;
    let plan = RoundPlan { degree: chosen.degree, threshold: chosen.threshold, ..plan };
    plan.validate().map_err(refused)?;
    let fused_before = measure_fused();
    let ka_before = measure_key_agreement();
    let mut by_index: Vec<Arc<IdentityKey>> = Vec::with_capacity(n);
    for id in &plan.selected {
        by_index.push(identities.iter().find(|k| k.id() == *id).expect("same ids").clone());
    }
    let rec_before = measure_reconstruction(plan.threshold as usize, graph, &mut os);
    let policy = ClientPolicy { min_adversary: AdversaryClass::Curious, ..ClientPolicy::default() };
    let verifier = Arc::new(RawKeyCredentials);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new().num_threads(args.threads.max(1)).build().map_err(failed)?,
    );
    let mut server = SecAggServer::new(plan.clone(), verifier.clone())
        .map_err(failed)?
        .with_thread_pool(pool.clone());

    // Dropouts: a seeded choice of ⌊δn⌋ clients, gone after ShareKeys.
    let drop_count = (n as u64 * u64::from(dropout_ppm) / u64::from(PPM)) as usize;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (seeded.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let dropped: BTreeSet<usize> = order[..drop_count].iter().copied().collect();

    // The clients check the plan as deployed clients do, unless (k, t) were overridden: then
    // they take them as given (every other check still applies).
    let new_client =
        if chosen == finder { SecAggClient::new } else { hazmat::client_with_plan_parameters };
    let mut clients: Vec<SecAggClient> = by_index
        .iter()
        .map(|k| {
            new_client(
                k.clone(),
                verifier.clone(),
                &policy,
                plan.clone(),
                &stand_in_trained_on(&plan, 0),
                &ContributionLedger::default(),
            )
        })
        .collect::<Result<_, _>>()
        .map_err(failed)?;

    // Phases 0 and 1, the server's part and each client's timed on their own.
    let t0 = Instant::now();
    let start = Instant::now();
    for c in &clients {
        server.receive_advertise(c.advertise().client, c.advertise().clone()).map_err(failed)?;
    }
    let forwards = server.close_advertise().map_err(failed)?;
    let server_advertise_s = start.elapsed().as_secs_f64();
    let replies: Vec<_> = clients
        .par_iter_mut()
        .zip(forwards.par_iter())
        .map(|(c, f)| {
            let start = Instant::now();
            c.handle_keys(f).map(|r| (r, start.elapsed().as_secs_f64()))
        })
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    let mut client_keys: Vec<f64> = replies.iter().map(|(_, s)| *s).collect();
    client_keys.sort_by(f64::total_cmp);
    let client_keys_s = client_keys[client_keys.len() / 2];
    let share_keys_bytes = encode(&replies[0].0).len();
    // Each ShareKeys checked on the server's threads (as the coordinator's service checks each
    // as it arrives, off the engine), then taken one by one, and the phase closed.
    let start = Instant::now();
    let check = server.share_keys_check().map_err(failed)?;
    let checked: Vec<(CheckedShareKeys, f64)> = pool
        .install(|| {
            replies
                .into_par_iter()
                .map(|(r, _)| {
                    let start = Instant::now();
                    check.check(r.client, r).map(|c| (c, start.elapsed().as_secs_f64()))
                })
                .collect::<Result<_, _>>()
        })
        .map_err(failed)?;
    let mut checks: Vec<f64> = checked.iter().map(|(_, s)| *s).collect();
    let server_share_keys_check_cpu_s: f64 = checks.iter().sum();
    checks.sort_by(f64::total_cmp);
    let server_share_keys_check_median_s = checks[checks.len() / 2];
    let close = Instant::now();
    for (c, _) in checked {
        server.receive_checked_share_keys(c.message().client, c).map_err(failed)?;
    }
    let forwards = server.close_share_keys().map_err(failed)?;
    let server_share_keys_close_s = close.elapsed().as_secs_f64();
    let server_share_keys_s = start.elapsed().as_secs_f64();
    let shares_forward_bytes = encode(&forwards[0]).len();

    // Phase 1½: each client opens its shares (in parallel); the server judges what comes.
    let complaints: Vec<_> = clients
        .par_iter_mut()
        .zip(forwards.par_iter())
        .map(|(c, f)| {
            let start = Instant::now();
            c.handle_shares(f).map(|r| (r, start.elapsed().as_secs_f64()))
        })
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    let mut client_open: Vec<f64> = complaints.iter().map(|(_, s)| *s).collect();
    client_open.sort_by(f64::total_cmp);
    let client_open_s = client_open[client_open.len() / 2];
    let complaints_bytes = encode(&complaints[0].0).len();
    let start = Instant::now();
    for (m, _) in complaints {
        server.receive_complaints(m.client, m).map_err(failed)?;
    }
    let exclusions = server.close_complaints().map_err(failed)?;
    let server_complaints_s = start.elapsed().as_secs_f64();
    let setup_s = t0.elapsed().as_secs_f64();

    // Phase 2: clients mask in parallel (they are independent machines); the server adds each
    // masked input to its running sum as it arrives, timed on its own.
    let mut clear = vec![0u32; d];
    let mut server_sum = Duration::ZERO;
    let mut client_mask = Vec::new();
    let mut upload_bytes = 0usize;
    let batch = rayon::current_num_threads().max(1) * 2;
    let mut ledgers = vec![ContributionLedger::default(); n];
    for (b, (group, ledgers)) in
        clients.chunks_mut(batch).zip(ledgers.chunks_mut(batch)).enumerate()
    {
        let masked: Vec<_> = group
            .par_iter_mut()
            .zip(ledgers.par_iter_mut())
            .enumerate()
            .filter(|(j, _)| !dropped.contains(&(b * batch + j)))
            .map(|(j, (c, ledger))| {
                let i = b * batch + j;
                let x = input_of(args.seed, i, d);
                let start = Instant::now();
                let y = c.handle_exclusions(&exclusions, &x, ledger);
                (x, y, start.elapsed())
            })
            .collect();
        for (x, y, took) in masked {
            let y = y.map_err(failed)?;
            client_mask.push(took.as_secs_f64());
            if upload_bytes == 0 {
                upload_bytes = encode(&y).len();
            }
            for (c, v) in clear.iter_mut().zip(&x) {
                *c = c.wrapping_add(*v);
            }
            let start = Instant::now();
            server.receive_masked_input(y.client, &y).map_err(failed)?;
            server_sum += start.elapsed();
        }
    }
    let request = server.close_masked_input().map_err(failed)?;

    // Phases 3 and 4 (clients verify the consistency signatures in parallel).
    let u3 = server.u3();
    let signatures: Vec<_> = clients
        .par_iter_mut()
        .enumerate()
        .filter(|(i, _)| u3.contains(i))
        .map(|(_, c)| c.handle_consistency(&request))
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    for s in signatures {
        server.receive_consistency(s.client, s).map_err(failed)?;
    }
    let request = server.close_consistency().map_err(failed)?;
    let responses: Vec<_> = clients
        .par_iter_mut()
        .enumerate()
        .filter(|(i, _)| u3.contains(i))
        .map(|(_, c)| c.handle_unmasking(&request))
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    for r in responses {
        server.receive_unmasking(r.client, r).map_err(failed)?;
    }
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let sum = server.finish().map_err(failed)?;
    let server_unmask_s = start.elapsed().as_secs_f64();
    let server_unmask_cpu_s = process_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64());
    let exact = sum == clear;

    // The minimum work, computed independently of the server.
    let g = server.graph();
    let u2 = server.u2();
    let pair_masks: usize = u2
        .iter()
        .filter(|v| !u3.contains(v))
        .map(|&v| g.neighbours(v).iter().filter(|u| u3.contains(u)).count())
        .sum();
    let expected_words = d as u64 * (u3.len() + pair_masks) as u64;
    let stats = server.stats();
    if stats.mask_words != expected_words || stats.key_agreements != pair_masks as u64 {
        return Err(failed(format!(
            "server did more than the minimum: {} mask words (minimum {expected_words}), {} key agreements (minimum {pair_masks})",
            stats.mask_words, stats.key_agreements
        )));
    }
    // One self-mask seed per survivor, one mask key per dropped client with a surviving neighbour.
    let reconstructions = u3.len()
        + u2.iter()
            .filter(|v| !u3.contains(v))
            .filter(|&&v| g.neighbours(v).iter().any(|u| u3.contains(u)))
            .count();
    if stats.reconstructions != reconstructions as u64 {
        return Err(failed(format!(
            "{} reconstructions, expected {reconstructions}",
            stats.reconstructions
        )));
    }

    // Microbenchmarks in the same process, separately from the round: the best of a run before
    // and one after it, so that a busy moment of the machine does not lower the limit.
    let fused_gbps = fused_before.max(measure_fused());
    let ka_us = ka_before.min(measure_key_agreement());
    let reconstruct_us =
        rec_before.min(measure_reconstruction(plan.threshold as usize, graph, &mut os));
    let prg_bytes = stats.mask_words * 4;
    let limit_s = prg_bytes as f64 / (fused_gbps * 1e9)
        + stats.key_agreements as f64 * ka_us * 1e-6
        + stats.reconstructions as f64 * reconstruct_us * 1e-6;
    let efficiency = limit_s / server_unmask_s;
    // Linux updates a running thread's count at scheduler ticks: a stretch of a few
    // milliseconds may read as none, and then says nothing.
    let efficiency_on_cpu = server_unmask_cpu_s.filter(|&cpu| cpu > 0.0).map(|cpu| limit_s / cpu);
    client_mask.sort_by(f64::total_cmp);
    let client_mask_s = client_mask[client_mask.len() / 2];
    let server_sum_s = server_sum.as_secs_f64();
    let report = serde_json::json!({
        "clients": n,
        "dim": d,
        "dropout": args.dropout,
        "graph": match graph { GraphKind::Complete => "complete", GraphKind::Harary => "harary" },
        "adversary": match adversary { AdversaryClass::Curious => "curious", _ => "semi-malicious" },
        "corrupt": args.corrupt,
        "threads": args.threads,
        "degree": plan.degree,
        "threshold": plan.threshold,
        "finder_degree": finder.degree,
        "finder_threshold": finder.threshold,
        "params_meet_targets": meets_targets,
        "u1": n,
        "u2": u2.len(),
        "u3": u3.len(),
        "exact": exact,
        "setup_s": setup_s,
        "server_advertise_s": server_advertise_s,
        "server_share_keys_s": server_share_keys_s,
        // Phase 1's checks: their CPU time over all dealers, one dealer's (median), and what
        // is left once every verdict is in (taking them, building the forwards).
        "server_share_keys_check_cpu_s": server_share_keys_check_cpu_s,
        "server_share_keys_check_median_s": server_share_keys_check_median_s,
        "server_share_keys_close_s": server_share_keys_close_s,
        "client_keys_s": client_keys_s,
        "client_open_s": client_open_s,
        "server_complaints_s": server_complaints_s,
        "complaints_bytes": complaints_bytes,
        "share_keys_bytes": share_keys_bytes,
        "shares_forward_bytes": shares_forward_bytes,
        "client_mask_s": client_mask_s,
        "server_sum_s": server_sum_s,
        "server_unmask_s": server_unmask_s,
        "server_unmask_cpu_s": server_unmask_cpu_s,
        "server_total_s": server_sum_s + server_unmask_s,
        "prg_bytes": prg_bytes,
        "key_agreements": stats.key_agreements,
        "reconstructions": stats.reconstructions,
        "client_upload_bytes": upload_bytes,
        "upload_ratio_to_4d": upload_bytes as f64 / (4.0 * d as f64),
        "fused_gbps": fused_gbps,
        "ka_us": ka_us,
        "reconstruct_us": reconstruct_us,
        "limit_s": limit_s,
        "efficiency": efficiency,
        // limit_s is a one-core limit; with T threads the ideal is limit_s / T.
        "efficiency_per_thread": efficiency / args.threads.max(1) as f64,
        // The limit over the CPU time the unmasking used (all threads of the process): the
        // time other processes held the cores is left out; null where the OS does not say.
        "efficiency_on_cpu": efficiency_on_cpu,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("secure aggregation round, in memory");
        for (k, v) in report.as_object().expect("object") {
            println!("  {k:<22} {v}");
        }
    }
    if !exact {
        return Err(failed("the unmasked sum differs from the clear sum"));
    }
    Ok(())
}

/// CPU time this process's threads have run so far, from Linux's per-task `schedstat` (its
/// first field is nanoseconds on a CPU); `None` where it cannot be read. On a shared machine the
/// wall time of the unmasking includes time other processes held the cores; this does not.
fn process_cpu_time() -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// Fused expand-and-add throughput on one core, GB of mask per second: one pass of the kernel
/// ([`MASKS_PER_PASS`] masks over a 1 Mi-word accumulator), the loop the unmasking runs once per
/// pass however many masks it regenerates.
fn measure_fused() -> f64 {
    let seeds: Vec<MaskSeed> =
        (0..MASKS_PER_PASS as u8).map(|i| MaskSeed::from_bytes([i; 16])).collect();
    let masks: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|s| (s, Sign::Add)).collect();
    let mut acc = vec![0u32; 1 << 20];
    let kernel = Kernel::single();
    kernel.apply(&mut acc, 0, &masks); // warm up
    let mut best = f64::MAX;
    for _ in 0..15 {
        let start = Instant::now();
        kernel.apply(&mut acc, 0, &masks);
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&acc);
    (masks.len() * acc.len() * 4) as f64 / best / 1e9
}

/// One pairwise-mask regeneration's key agreement and derivation, in microseconds.
fn measure_key_agreement() -> f64 {
    let mut rng = StdRng::seed_from_u64(3);
    let a = SecretScalar::random(&mut rng);
    let pks: Vec<_> = (0..64).map(|_| SecretScalar::random(&mut rng).public()).collect();
    let ctx = fedsec_crypto::RoundContext([1; 32]);
    let (u, v) = (ClientId([1; 32]), ClientId([2; 32]));
    let mut best = f64::MAX;
    for _ in 0..10 {
        let start = Instant::now();
        for pk in &pks {
            std::hint::black_box(MaskSeed::pairwise(&a, pk, &ctx, &u, &v));
        }
        best = best.min(start.elapsed().as_secs_f64() / pks.len() as f64);
    }
    best * 1e6
}

/// One checked reconstruction from t shares, in microseconds, in the regime of the round: the
/// complete graph reuses one set of holders (cached coefficients); the Harary graph has a
/// different set for every secret.
fn measure_reconstruction<R: CryptoRng + ?Sized>(t: usize, graph: GraphKind, rng: &mut R) -> f64 {
    let secret = SecretScalar::random(rng);
    let public = secret.public();
    let xs: Vec<u32> = (1..=t as u32).collect();
    let shares = shamir::split(secret.expose(), t, &xs, rng).expect("valid split");
    let picked: Vec<(u32, &shamir::ShareValue)> = xs.iter().copied().zip(shares.iter()).collect();
    let mut cache = LagrangeCache::new();
    let reps = 20;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..reps {
            if graph == GraphKind::Harary {
                cache = LagrangeCache::new();
            }
            std::hint::black_box(
                cache.reconstruct_checked(&picked, &public).expect("valid shares"),
            );
        }
        best = best.min(start.elapsed().as_secs_f64() / f64::from(reps));
    }
    best * 1e6
}
