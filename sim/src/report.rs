//! The report of a run: `report.json`, `rounds.csv`, the summary table, and plots.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where |U3| sits in an attempt's set sizes: the size phase 2's close fixed.
const U3_AT: usize = fedsec_crypto::secagg::Phase::MaskedInputCollection.index() + 1;

use fedsec_client::Evaluation;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::experiment::{ASSUMED_CORRUPT, Experiment, PHASES, Prepared, SimError};
use crate::run::SecureRun;

/// The font of the plots, shipped with the harness (see `sim/assets/LICENSE-DejaVu`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One completed round, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRow {
    /// The round.
    pub round: u64,
    /// Test accuracy of the secure run's model after the round.
    pub accuracy: f64,
    /// Its test loss.
    pub loss: f64,
    /// Test accuracy of the plaintext baseline after the same round.
    pub plaintext_accuracy: Option<f64>,
    /// Its test loss.
    pub plaintext_loss: Option<f64>,
    /// Attempts the round took (1 if none aborted).
    pub attempts: usize,
    /// |U| of the completed attempt.
    pub selected: usize,
    /// |U3|: clients whose inputs are in the sum.
    pub participants: usize,
    /// Selected clients that did not see the round through.
    pub dropped: usize,
    /// Clients the schedule dropped in this round (any attempt).
    pub scheduled_drops: usize,
    /// Seconds each phase stayed open.
    pub phase_seconds: Vec<f64>,
    /// Mean bytes a client sent (clients that saw the result).
    pub bytes_sent_per_client: f64,
    /// Mean bytes a client received.
    pub bytes_received_per_client: f64,
    /// Mean local training loss.
    pub train_loss: Option<f64>,
    /// Seconds the round took to compute, with the in-memory transport (its phase times are
    /// virtual).
    pub compute_seconds: Option<f64>,
}

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `report.json`'s content.
    pub json: Value,
    /// The completed rounds.
    pub rows: Vec<RoundRow>,
}

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 }
}

/// Builds the report from the secure run, its evaluations (one per completed round), the
/// plaintext baseline's evaluations (if it ran) and the centralized reference.
pub fn build(
    exp: &Experiment,
    p: &Prepared,
    run: &SecureRun,
    secure: &[Evaluation],
    plaintext: Option<&[Evaluation]>,
    centralized: Option<&Evaluation>,
) -> Report {
    let completed: Vec<_> = run.completed().collect();
    let rows: Vec<RoundRow> = completed
        .iter()
        .zip(secure)
        .enumerate()
        .map(|(j, (a, e))| RoundRow {
            round: a.round_id,
            accuracy: e.accuracy,
            loss: e.loss,
            plaintext_accuracy: plaintext.and_then(|p| p.get(j)).map(|e| e.accuracy),
            plaintext_loss: plaintext.and_then(|p| p.get(j)).map(|e| e.loss),
            attempts: run.attempts.iter().filter(|b| b.round_id == a.round_id).count(),
            selected: a.selected(),
            participants: a.set_sizes.get(U3_AT).copied().unwrap_or(0),
            dropped: a.dropped(),
            scheduled_drops: run
                .attempts
                .iter()
                .filter(|b| b.round_id == a.round_id)
                .map(|b| b.scheduled_drops)
                .sum(),
            phase_seconds: a.phase_seconds.clone(),
            bytes_sent_per_client: mean(&a.bytes_sent),
            bytes_received_per_client: mean(&a.bytes_received),
            train_loss: a.train_loss,
            compute_seconds: a.compute_s,
        })
        .collect();
    let aborted: Vec<Value> = run
        .attempts
        .iter()
        .filter(|a| !a.completed)
        .map(|a| {
            json!({
                "round": a.round_id,
                "reason": a.abort_reason,
                "set_sizes": a.set_sizes,
                "phase_seconds": a.phase_seconds,
            })
        })
        .collect();
    let last = |e: Option<&Evaluation>| {
        e.map(|e| json!({"final_accuracy": e.accuracy, "final_loss": e.loss}))
    };
    let secure_last = secure.last();
    let json = json!({
        "params": {
            "experiment": exp,
            "clients_with_examples": p.active.len(),
            "clients_per_round": p.clients_per_round,
            "min_clients": p.min_clients,
            "assumed_dropout": p.assumed_dropout,
            "assumed_corrupt": ASSUMED_CORRUPT,
            "max_examples": p.max_examples,
            "features": p.features,
            "classes": p.classes,
            "model_parameters": p.initial_model.len(),
            "test_examples": p.test.len(),
        },
        "secure": {
            "final_accuracy": secure_last.map(|e| e.accuracy),
            "final_loss": secure_last.map(|e| e.loss),
            "rounds_completed": rows.len(),
            "attempts_aborted": aborted.len(),
            "wall_seconds": run.wall_s,
            "peak_memory_mib": peak_memory_mib(),
        },
        "plaintext": plaintext.and_then(|p| last(p.last())),
        "centralized": last(centralized),
        "rounds": rows,
        "aborted_attempts": aborted,
    });
    Report { json, rows }
}

impl Report {
    /// Writes `report.json`, `rounds.csv` and the plots into `dir` (created if missing).
    /// Returns the files written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
        let io = |path: &Path, source| SimError::Io { path: path.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut written = Vec::new();
        let path = dir.join("report.json");
        let text = serde_json::to_string_pretty(&self.json)?;
        std::fs::write(&path, text + "\n").map_err(|e| io(&path, e))?;
        written.push(path);
        let path = dir.join("rounds.csv");
        std::fs::write(&path, self.csv()).map_err(|e| io(&path, e))?;
        written.push(path);
        written.extend(self.plots(dir)?);
        Ok(written)
    }

    /// `rounds.csv`: one line per completed round.
    pub fn csv(&self) -> String {
        let mut out = Vec::new();
        let phases: Vec<String> = PHASES.iter().map(|p| format!("{p}_s")).collect();
        let _ = writeln!(
            out,
            "round,accuracy,loss,plaintext_accuracy,plaintext_loss,attempts,selected,participants,\
             dropped,scheduled_drops,{},bytes_sent_per_client,bytes_received_per_client,train_loss",
            phases.join(",")
        );
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        for r in &self.rows {
            let ph: Vec<String> = (0..5)
                .map(|i| r.phase_seconds.get(i).map(|s| format!("{s:.4}")).unwrap_or_default())
                .collect();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.round,
                r.accuracy,
                r.loss,
                opt(r.plaintext_accuracy),
                opt(r.plaintext_loss),
                r.attempts,
                r.selected,
                r.participants,
                r.dropped,
                r.scheduled_drops,
                ph.join(","),
                r.bytes_sent_per_client,
                r.bytes_received_per_client,
                opt(r.train_loss),
            );
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The summary table for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "round  acc(secure)  acc(plain)  loss(secure)  selected  summed  dropped  round s   KB up  KB down\n",
        );
        for r in &self.rows {
            let plain = r.plaintext_accuracy.map_or("-".into(), |a| format!("{a:.4}"));
            out.push_str(&format!(
                "{:>5}  {:>11.4}  {:>10}  {:>12.4}  {:>8}  {:>6}  {:>7}  {:>7.2}  {:>6.1}  {:>7.1}\n",
                r.round,
                r.accuracy,
                plain,
                r.loss,
                r.selected,
                r.participants,
                r.dropped,
                r.compute_seconds.unwrap_or_else(|| r.phase_seconds.iter().sum::<f64>()),
                r.bytes_sent_per_client / 1e3,
                r.bytes_received_per_client / 1e3,
            ));
        }
        let j = &self.json;
        let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
        out.push_str(&format!(
            "\nfinal test accuracy: secure {} · plaintext {} · centralized {}\n",
            f(&j["secure"]["final_accuracy"]),
            f(&j["plaintext"]["final_accuracy"]),
            f(&j["centralized"]["final_accuracy"]),
        ));
        out.push_str(&format!(
            "rounds completed: {} · attempts aborted: {} · {:.1} s · peak memory {}\n",
            j["secure"]["rounds_completed"],
            j["secure"]["attempts_aborted"],
            j["secure"]["wall_seconds"].as_f64().unwrap_or(0.0),
            j["secure"]["peak_memory_mib"].as_f64().map_or("-".into(), |m| format!("{m:.0} MiB")),
        ));
        for a in j["aborted_attempts"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  round {} aborted: {}\n",
                a["round"],
                a["reason"].as_str().unwrap_or("?")
            ));
        }
        out
    }

    fn plots(&self, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
        register_font();
        let rounds: Vec<f64> = self.rows.iter().map(|r| r.round as f64).collect();
        let series = |f: &dyn Fn(&RoundRow) -> Option<f64>| -> Vec<(f64, f64)> {
            self.rows.iter().zip(&rounds).filter_map(|(r, x)| f(r).map(|y| (*x, y))).collect()
        };
        let mut written = Vec::new();
        let mut plot = |name: &str, title: &str, y: &str, lines: Vec<(String, Vec<(f64, f64)>)>| {
            let path = dir.join(name);
            line_plot(&path, title, y, &lines)
                .map_err(|e| SimError::Plot { path: path.clone(), reason: e.to_string() })?;
            written.push(path);
            Ok::<(), SimError>(())
        };
        let centralized = self.json["centralized"]["final_accuracy"].as_f64();
        let mut acc = vec![
            ("secure aggregation".to_string(), series(&|r| Some(r.accuracy))),
            ("plaintext".to_string(), series(&|r| r.plaintext_accuracy)),
        ];
        if let (Some(c), Some(first), Some(last)) = (centralized, rounds.first(), rounds.last()) {
            acc.push(("centralized".to_string(), vec![(*first, c), (*last, c)]));
        }
        plot("accuracy.png", "Test accuracy per round", "accuracy", acc)?;
        plot(
            "loss.png",
            "Test loss per round",
            "cross-entropy",
            vec![
                ("secure aggregation".to_string(), series(&|r| Some(r.loss))),
                ("plaintext".to_string(), series(&|r| r.plaintext_loss)),
            ],
        )?;
        let phases = PHASES
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), series(&|r| r.phase_seconds.get(i).copied())))
            .collect();
        plot("phases.png", "Time per phase per round", "seconds", phases)?;
        plot(
            "bytes.png",
            "Bytes per client per round",
            "kilobytes",
            vec![
                ("sent".to_string(), series(&|r| Some(r.bytes_sent_per_client / 1e3))),
                ("received".to_string(), series(&|r| Some(r.bytes_received_per_client / 1e3))),
            ],
        )?;
        Ok(written)
    }
}

/// The process's peak resident memory (Linux: `VmHWM`), in MiB.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse; a failure would only leave text out.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A line chart of `lines` (name, points) against the round.
fn line_plot(
    path: &Path,
    title: &str,
    y_label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let points = lines.iter().flat_map(|l| l.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = ((y0 - pad).max(if y0 >= 0.0 { 0.0 } else { f64::MIN }), y1 + pad);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
