//! The operator's log of a task: a line when selection waits (throttled), one per ended
//! attempt, and one when the task finishes. The engine says what happened
//! ([`Progress`](crate::engine::Progress)); this writes it, with the task's name.

use std::time::{Duration, Instant};

use crate::engine::{Progress, RoundOutcome};

/// At most one "waiting" line this often, however fast clients check in.
const WAITING_EVERY: Duration = Duration::from_secs(2);

/// What the log has said so far about one task.
#[derive(Debug)]
pub(crate) struct ProgressLog {
    task: String,
    last_waiting: Option<Instant>,
    /// The round of the last attempt that ended, and how many attempts it has had.
    attempts: (u64, u32),
}

impl ProgressLog {
    pub(crate) fn new(task: impl Into<String>) -> Self {
        ProgressLog { task: task.into(), last_waiting: None, attempts: (u64::MAX, 0) }
    }

    pub(crate) fn record(&mut self, progress: &Progress, now: Instant) {
        match progress {
            Progress::Waiting { .. } => {
                if self.last_waiting.is_some_and(|t| now.duration_since(t) < WAITING_EVERY) {
                    return;
                }
                self.last_waiting = Some(now);
                tracing::info!(task = %self.task, "{}", waiting_line(progress));
            }
            Progress::Ended(outcome) => {
                let attempt =
                    if self.attempts.0 == outcome.round_id.0 { self.attempts.1 + 1 } else { 1 };
                self.attempts = (outcome.round_id.0, attempt);
                // The next selection starts a new story.
                self.last_waiting = None;
                if outcome.completed {
                    tracing::info!(task = %self.task, "{}", ended_line(outcome, attempt));
                } else {
                    tracing::warn!(task = %self.task, "{}", ended_line(outcome, attempt));
                }
            }
            Progress::Finished { rounds, checkpoint_version } => tracing::info!(
                task = %self.task,
                "task finished: {rounds} rounds completed, final checkpoint version {checkpoint_version}; clients checking in are told so"
            ),
        }
    }
}

/// "round 3: waiting for 2 more clients (have 8, need 10: 10 per round × over-selection
/// 1.0; at the selection deadline a round starts with 8 or more)".
pub(crate) fn waiting_line(p: &Progress) -> String {
    let Progress::Waiting {
        round_id,
        waiting,
        start_at,
        min_clients,
        clients_per_round,
        over_selection,
    } = p
    else {
        return String::new();
    };
    let more = start_at.saturating_sub(*waiting);
    format!(
        "round {}: waiting for {more} more client{} (have {waiting}, need {start_at}: {clients_per_round} per round × over-selection {over_selection}; at the selection deadline a round starts with {min_clients} or more)",
        round_id.0,
        if more == 1 { "" } else { "s" },
    )
}

/// "round 3 attempt 1 completed: selected 10, summed 9, dropped 1; phases 0.01 0.02 0.10
/// 0.01 0.02 s; checkpoint version 3".
pub(crate) fn ended_line(o: &RoundOutcome, attempt: u32) -> String {
    let selected = o.set_sizes.first().copied().unwrap_or(0);
    let summed = o.participants();
    let phases: Vec<String> = o.phase_seconds.iter().map(|s| format!("{s:.2}")).collect();
    let head = format!(
        "round {} attempt {attempt} {}: selected {selected}, summed {summed}, dropped {}; phases {} s",
        o.round_id.0,
        if o.completed { "completed" } else { "aborted" },
        selected.saturating_sub(summed),
        phases.join(" "),
    );
    match (&o.new_checkpoint_version, &o.abort_reason) {
        (Some(v), _) => format!("{head}; checkpoint version {v}"),
        (None, Some(reason)) => format!("{head}; {reason}; the round is tried again"),
        (None, None) => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedsec_crypto::{AttemptNonce, RoundContext, RoundId};

    #[test]
    fn lines_name_the_round_the_sets_and_what_selection_waits_for() {
        let waiting = Progress::Waiting {
            round_id: RoundId(3),
            waiting: 8,
            start_at: 13,
            min_clients: 10,
            clients_per_round: 10,
            over_selection: 1.3,
        };
        assert_eq!(
            waiting_line(&waiting),
            "round 3: waiting for 5 more clients (have 8, need 13: 10 per round × over-selection 1.3; at the selection deadline a round starts with 10 or more)"
        );
        let outcome = RoundOutcome {
            round_id: RoundId(3),
            attempt: AttemptNonce([1; 16]),
            ctx: RoundContext([2; 32]),
            completed: true,
            new_checkpoint_version: Some(3),
            abort_reason: None,
            set_sizes: vec![10, 10, 10, 10, 9, 9, 9],
            phase_seconds: vec![0.01, 0.02, 0.03, 0.1, 0.01, 0.02],
            upload_bytes: 0,
        };
        assert_eq!(
            ended_line(&outcome, 2),
            "round 3 attempt 2 completed: selected 10, summed 9, dropped 1; phases 0.01 0.02 0.03 0.10 0.01 0.02 s; checkpoint version 3"
        );
    }

    #[test]
    fn attempts_are_counted_per_round_and_waiting_lines_are_throttled() {
        let mut log = ProgressLog::new("t");
        let now = Instant::now();
        let ended = |round| {
            Progress::Ended(Box::new(RoundOutcome {
                round_id: RoundId(round),
                attempt: AttemptNonce([0; 16]),
                ctx: RoundContext([0; 32]),
                completed: false,
                new_checkpoint_version: None,
                abort_reason: None,
                set_sizes: vec![],
                phase_seconds: vec![],
                upload_bytes: 0,
            }))
        };
        log.record(&ended(1), now);
        log.record(&ended(1), now);
        assert_eq!(log.attempts, (1, 2));
        log.record(&ended(2), now);
        assert_eq!(log.attempts, (2, 1));
        let waiting = Progress::Waiting {
            round_id: RoundId(2),
            waiting: 1,
            start_at: 2,
            min_clients: 2,
            clients_per_round: 2,
            over_selection: 1.0,
        };
        log.record(&waiting, now);
        assert_eq!(log.last_waiting, Some(now));
        log.record(&waiting, now + Duration::from_millis(500));
        assert_eq!(log.last_waiting, Some(now), "throttled");
        log.record(&waiting, now + WAITING_EVERY);
        assert_eq!(log.last_waiting, Some(now + WAITING_EVERY));
    }
}
