//! Hooks for tests of the whole system and for the simulation harness: simulated dropouts,
//! latency and stragglers, and a dump of each cleartext quantized update.
//!
//! They exist only with the cargo feature `test-hooks`, which `fedsec-integration-tests` and
//! `fedsec-sim` turn on in their dependency on this crate. The shipped client
//! (`cargo build -p fedsec-client`, `cargo install`) is built without it: its library has no
//! `TestHooks` and its binary no `--test-…` flag. Without the feature the driver calls the
//! do-nothing stand-in below, so [`crate::Client`] reads the same either way.

#[cfg(feature = "test-hooks")]
pub use enabled::TestHooks;

#[cfg(not(feature = "test-hooks"))]
pub(crate) use disabled::TestHooks;

#[cfg(feature = "test-hooks")]
mod enabled {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use fedsec_crypto::ClientId;
    use fedsec_crypto::secagg::Phase;

    use crate::error::{ClientError, Result};
    use crate::round::{Request, Round};

    /// Hooks for tests of the whole system; off (empty) by default.
    #[derive(Debug, Clone, Default)]
    pub struct TestHooks {
        /// Write each quantized input (little-endian u32 words) to
        /// `DIR/round-{round}-{attempt}-{client id}.bin` before masking it, so a test can compare
        /// the coordinator's sum with the clear sum. This leaks the input: tests only.
        pub dump_quantized: Option<PathBuf>,
        /// Stop (sleep forever) right before uploading the masked input of this round.
        pub stall_before_upload: Option<u64>,
        /// Simulated dropouts: round id → the phase before whose message the client stops, as if
        /// it died. [`crate::Client::run`] returns at once with
        /// [`crate::RunSummary::dropped_out`] set; each entry fires once.
        pub drop_out: BTreeMap<u64, Phase>,
        /// Added network latency: a pause before every call.
        pub latency: Duration,
        /// A slow site: a pause after local training, before the first phase's message.
        pub slow_training: Duration,
    }

    impl TestHooks {
        /// Shows `round`'s quantized input to the dump, if one is asked for.
        pub(crate) fn observe(&self, round: &mut Round, me: ClientId) {
            let Some(dir) = self.dump_quantized.clone() else { return };
            round.observe_quantized(Box::new(move |plan, x| {
                let bytes: Vec<u8> = x.iter().flat_map(|w| w.to_le_bytes()).collect();
                let name = format!(
                    "round-{}-{}-{}.bin",
                    plan.round_id.0,
                    hex::encode(plan.attempt.0),
                    me.to_hex()
                );
                if let Err(e) = std::fs::write(dir.join(&name), bytes) {
                    tracing::error!(file = name, error = %e, "cannot dump the quantized input");
                }
            }));
        }

        /// Before `request` of round `round` leaves: a simulated dropout, or a stall before the
        /// upload.
        pub(crate) async fn before_send(&mut self, round: u64, request: &Request) -> Result<()> {
            if let Some(phase) = request.phase()
                && self.drop_out.get(&round) == Some(&phase)
            {
                self.drop_out.remove(&round);
                return Err(ClientError::DroppedOut { round, phase });
            }
            if matches!(request, Request::UploadMaskedInput(_))
                && self.stall_before_upload == Some(round)
            {
                tracing::info!("stalling before the upload (test hook)");
                std::future::pending::<()>().await;
            }
            Ok(())
        }

        /// After local training: a slow site.
        pub(crate) async fn after_training(&self) {
            if !self.slow_training.is_zero() {
                tokio::time::sleep(self.slow_training).await;
            }
        }

        /// Before every call: added latency.
        pub(crate) async fn before_call(&self) {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
mod disabled {
    use fedsec_crypto::ClientId;

    use crate::error::Result;
    use crate::round::{Request, Round};

    /// No hooks: every call returns at once and changes nothing. (Not a unit struct, so that
    /// the driver builds it with `TestHooks::default()` in both builds.)
    #[derive(Debug, Clone, Default)]
    pub(crate) struct TestHooks(());

    impl TestHooks {
        pub(crate) fn observe(&self, _round: &mut Round, _me: ClientId) {}

        pub(crate) async fn before_send(&mut self, _round: u64, _request: &Request) -> Result<()> {
            Ok(())
        }

        pub(crate) async fn after_training(&self) {}

        pub(crate) async fn before_call(&self) {}
    }
}
