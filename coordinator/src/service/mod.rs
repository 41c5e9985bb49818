//! The gRPC adapter: the Federation and Admin services over the coordinator's task runtime
//! ([`crate::runtime`]).
//!
//! Handlers are thin: authenticate the peer ([`identify`]), convert the wire message
//! ([`crate::wire`]), call one engine method through the task's queue or read its published
//! view, map the error ([`status`]). The small phases long-poll: a call submits the client's
//! message, then waits — parked with the engine thread — until its own reply is ready.

mod admin;
mod federation;
mod status;

use std::time::Duration;

use fedsec_crypto::ClientId;
use tonic::{Request, Status};

use crate::runtime::{AuthMode, Coordinator};

pub use admin::AdminService;
pub(crate) use admin::task_config;
pub use federation::FederationService;

/// The metadata header that names the client on a plain-TCP (`--insecure`) connection, where
/// no certificate does. Loopback demos only: anyone on the host can claim any id.
pub const INSECURE_CLIENT_ID_HEADER: &str = "x-fedsec-client-id";

/// How long a check-in call waits for the selection before it answers "check in again".
pub const CHECK_IN_LONG_POLL: Duration = Duration::from_secs(20);

/// Extra time a phase call waits beyond the phase's deadline for the engine to close it.
const LONG_POLL_SLACK: Duration = Duration::from_secs(5);

/// The client a request comes from, refusing denied and unauthenticated ones.
pub(crate) fn identify<T>(c: &Coordinator, req: &Request<T>) -> Result<ClientId, Status> {
    let id = match c.auth {
        AuthMode::MutualTls => crate::auth::authenticate(req, &c.deny)?.id,
        AuthMode::InsecureLoopback => {
            let value = req
                .metadata()
                .get(INSECURE_CLIENT_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "without TLS, the {INSECURE_CLIENT_ID_HEADER} header names the client"
                    ))
                })?;
            let bytes: [u8; 32] = hex::decode(value)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Status::unauthenticated("client id is not 64 hex digits"))?;
            let id = ClientId(bytes);
            if c.deny.contains(&id) {
                return Err(Status::permission_denied(format!(
                    "client {} is on the deny-list",
                    id.to_hex()
                )));
            }
            id
        }
    };
    // An operator's certificate calls the Admin service only: were it a client too, the
    // coordinator's side would hold one more identity in its rounds (a colluding client).
    if c.admins.contains(&id) {
        return Err(Status::permission_denied(format!(
            "{} is an operator's certificate; operators do not take part in rounds",
            id.to_hex()
        )));
    }
    Ok(id)
}
