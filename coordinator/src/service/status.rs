//! The one place where the coordinator's errors become gRPC statuses.

use fedsec_crypto::Error as Core;
use tonic::{Code, Status};

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Protocol(core) => core_code(core),
            // The service's own bookkeeping of checkpoints, never a caller's doing.
            Error::NothingToCommit { .. }
            | Error::WrongCommit { .. }
            | Error::NothingToAggregate => Code::Internal,
            Error::InvalidConfig(_)
            | Error::Malformed(_)
            | Error::BadUpload { .. }
            | Error::Model(_)
            | Error::RepublishLayout
            | Error::RepublishVersion { .. } => Code::InvalidArgument,
            Error::UnknownTask(_) => Code::NotFound,
            Error::NotSelected(_) => Code::PermissionDenied,
            Error::TaskFinished
            | Error::NotCurrentAttempt { .. }
            | Error::PhaseClosed { .. }
            | Error::PhaseNotOpen { .. }
            | Error::UploadEvicted { .. }
            | Error::RepublishNotNow { .. } => Code::FailedPrecondition,
            Error::RoundAborted(_) => Code::Aborted,
            // Retryable: the client sends again (the check runs again, or its verdict answers).
            Error::CheckInFlight | Error::CheckNotRun => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

fn core_code(e: &Core) -> Code {
    match e {
        Core::PhaseAlreadyAnswered(_) | Core::DuplicateClient(_) | Core::UploadComplete(_) => {
            Code::AlreadyExists
        }
        Core::SenderMismatch { .. } | Core::NotSelected(_) | Core::NotEligible { .. } => {
            Code::PermissionDenied
        }
        Core::TooManyUploadsInFlight { .. } => Code::ResourceExhausted,
        Core::Aborted(_) | Core::Abandoned | Core::Unfinished | Core::TooFewClients { .. } => {
            Code::Aborted
        }
        Core::OutOfPhase { .. } | Core::WrongContext => Code::FailedPrecondition,
        Core::UnsupportedVersion { .. } => Code::Unimplemented,
        _ => Code::InvalidArgument,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{AbortReason, ConfigRule};
    use fedsec_crypto::ClientId;
    use fedsec_crypto::secagg::Phase;

    #[test]
    fn each_rule_has_its_status() {
        let cases: Vec<(Error, Code)> = vec![
            (
                fedsec_wire::WireError { field: "x", reason: fedsec_wire::Reason::Missing }.into(),
                Code::InvalidArgument,
            ),
            (Error::PhaseClosed { phase: Phase::ShareKeys }, Code::FailedPrecondition),
            (Error::CheckNotRun, Code::Unavailable),
            (Error::CheckInFlight, Code::Unavailable),
            (Error::NotSelected(ClientId([0; 32])), Code::PermissionDenied),
            (
                Error::RoundAborted(AbortReason::Protocol(Core::TooFewClients {
                    phase: Phase::ConsistencyCheck,
                    have: 6,
                    need: 7,
                })),
                Code::Aborted,
            ),
            (Error::InvalidConfig(ConfigRule::NoClients), Code::InvalidArgument),
            (Core::Aborted(Box::new(Core::WrongContext)).into(), Code::Aborted),
            (Core::PhaseAlreadyAnswered(Phase::AdvertiseKeys).into(), Code::AlreadyExists),
            (Core::TooManyUploadsInFlight { limit: 2 }.into(), Code::ResourceExhausted),
            (Core::BadSignature(ClientId([0; 32])).into(), Code::InvalidArgument),
            (Error::RepublishNotNow { why: "an attempt is running" }, Code::FailedPrecondition),
            (Error::RepublishLayout, Code::InvalidArgument),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(s.message(), text);
        }
    }
}
