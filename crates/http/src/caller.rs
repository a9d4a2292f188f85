//! Who is calling: the principal the authentication middleware verified
//! for this request (see `auth`), or, when tokens are not required and the
//! request carried none, the loopback operator. The `cli` crate refuses
//! non-loopback listen addresses unless tokens are required, so the
//! operator fallback is only ever reachable from this machine.

use axum::http::HeaderMap;
use carelayer_records::{AuditChannel, Caller};

pub(crate) fn from_headers(_headers: &HeaderMap) -> Caller {
    crate::auth::current_caller().unwrap_or_else(|| Caller::local_operator(AuditChannel::Rest))
}
