//! Who is calling: the principal the authentication middleware verified
//! for this request (see `auth`). Every path but the public ones needs a
//! token, so a handler that finds no caller is serving a public path
//! (`/fhir/metadata`); it runs as "nobody", a client without scopes that
//! policy refuses everything, so a routing mistake fails closed.

use carelayer_policy::Principal;
use carelayer_records::{AuditChannel, Caller};

pub(crate) fn current() -> Caller {
    crate::auth::current_caller().unwrap_or_else(|| {
        Caller::new(
            Principal::System {
                client_id: "anonymous".into(),
                scopes: Vec::new(),
                org: None,
            },
            AuditChannel::Rest,
        )
    })
}
