//! Authentication of gRPC requests: the client is the holder of the TLS client certificate,
//! unless its id is on the deny-list.

use tonic::{Request, Status};

use crate::revocation::DenyList;
use crate::tls::{PeerIdentity, PeerInfo};

/// The connection a request came over, as [`crate::tls::tls_incoming`] or
/// [`crate::tls::tcp_incoming`] recorded it; `None` if the server was started another way.
pub fn peer_info<T>(req: &Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

/// The authenticated client of a request, unless it is denied.
///
/// * no client certificate → `UNAUTHENTICATED` ("a client certificate is required");
/// * a denied id → `PERMISSION_DENIED`, naming the id in full hex.
///
/// In `--insecure` mode (plain TCP, loopback demos) no request has an identity, so this refuses
/// every request; a service that supports that mode calls [`peer_info`] instead and decides
/// itself what to trust (and must still consult the deny-list).
pub fn authenticate<T>(req: &Request<T>, deny: &DenyList) -> Result<PeerIdentity, Status> {
    check_peer(peer_info(req), deny).cloned()
}

/// The rule of [`authenticate`] on a connection's [`PeerInfo`] (`None`: the server was started
/// another way): the edge layer applies it to a request's headers before its body is read.
pub fn check_peer<'a>(
    peer: Option<&'a PeerInfo>,
    deny: &DenyList,
) -> Result<&'a PeerIdentity, Status> {
    let Some(identity) = peer.and_then(|peer| peer.client.as_ref()) else {
        return Err(Status::unauthenticated("a client certificate is required"));
    };
    denied(&identity.id, deny)?;
    Ok(identity)
}

/// `PERMISSION_DENIED`, naming the id in full hex, if `id` is on the deny-list.
pub fn denied(id: &fedsec_crypto::ClientId, deny: &DenyList) -> Result<(), Status> {
    if deny.contains(id) {
        return Err(Status::permission_denied(format!(
            "client {} is on the deny-list",
            id.to_hex()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedsec_crypto::ClientId;
    use tonic::Code;

    fn request(client: Option<PeerIdentity>) -> Request<()> {
        let mut req = Request::new(());
        let remote_addr = "127.0.0.1:5000".parse().unwrap();
        req.extensions_mut().insert(PeerInfo { remote_addr, client, control: None });
        req
    }

    #[test]
    fn identity_required_and_deny_list_applied() {
        let deny = DenyList::empty();
        assert_eq!(
            authenticate(&Request::new(()), &deny).unwrap_err().code(),
            Code::Unauthenticated
        );
        let err = authenticate(&request(None), &deny).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "a client certificate is required");
        let who = PeerIdentity { id: ClientId([5; 32]), chain: vec![vec![1, 2, 3]] };
        assert_eq!(authenticate(&request(Some(who.clone())), &deny).unwrap(), who);
    }
}
