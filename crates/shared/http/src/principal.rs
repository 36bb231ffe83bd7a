/// Who is making a request, as far as request plumbing needs to know: the
/// authentication layer inserts it into the request extensions; idempotency keys and
/// rate limits are scoped by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Stable id of the actor (`user:<uuid>`, `service_account:<uuid>`, …).
    pub id: String,
}

impl Principal {
    pub const ANONYMOUS: &'static str = "anonymous";

    pub fn anonymous() -> Self {
        Self { id: Self::ANONYMOUS.to_owned() }
    }
}
