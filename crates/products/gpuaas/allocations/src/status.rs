//! The allocation state machine, as the spec draws it:
//!
//! ```text
//! requested → provisioning → active → releasing → released
//!      │            │                    ↑   │
//!      └──────┬─────┘                    │   ↓
//!           failed                  release_failed
//! ```
//!
//! `requested → failed` is the one addition: an allocation force-released (or whose
//! tenant ran out of money) before its workflow started fails without provisioning.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AllocationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStatus {
    Requested,
    Provisioning,
    Active,
    Releasing,
    Released,
    Failed,
    ReleaseFailed,
}

impl AllocationStatus {
    pub const ALL: &'static [AllocationStatus] = &[
        AllocationStatus::Requested,
        AllocationStatus::Provisioning,
        AllocationStatus::Active,
        AllocationStatus::Releasing,
        AllocationStatus::Released,
        AllocationStatus::Failed,
        AllocationStatus::ReleaseFailed,
    ];

    /// Statuses that count against concurrency caps and hold GPU slots.
    pub const LIVE: &'static [AllocationStatus] = &[
        AllocationStatus::Requested,
        AllocationStatus::Provisioning,
        AllocationStatus::Active,
        AllocationStatus::Releasing,
        AllocationStatus::ReleaseFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AllocationStatus::Requested => "requested",
            AllocationStatus::Provisioning => "provisioning",
            AllocationStatus::Active => "active",
            AllocationStatus::Releasing => "releasing",
            AllocationStatus::Released => "released",
            AllocationStatus::Failed => "failed",
            AllocationStatus::ReleaseFailed => "release_failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|status| status.as_str() == text)
    }

    /// Nothing more happens to a terminal allocation; its GPU slots are free.
    pub const fn is_terminal(self) -> bool {
        matches!(self, AllocationStatus::Released | AllocationStatus::Failed)
    }

    /// Whether the machine allows `self → to`.
    pub const fn can_become(self, to: AllocationStatus) -> bool {
        use AllocationStatus::*;
        matches!(
            (self, to),
            (Requested, Provisioning)
                | (Requested, Failed)
                | (Provisioning, Active)
                | (Provisioning, Failed)
                | (Active, Releasing)
                | (Releasing, Released)
                | (Releasing, ReleaseFailed)
                | (ReleaseFailed, Releasing)
        )
    }

    /// `Ok(to)` when allowed, else the 409 `allocation_invalid_transition` error.
    pub fn transition(self, to: AllocationStatus) -> Result<AllocationStatus, AllocationError> {
        if self.can_become(to) { Ok(to) } else { Err(AllocationError::InvalidTransition { from: self, to }) }
    }
}

impl std::fmt::Display for AllocationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statuses_round_trip_through_text_and_json() {
        for status in AllocationStatus::ALL {
            assert_eq!(AllocationStatus::parse(status.as_str()), Some(*status));
            assert_eq!(serde_json::to_value(status).ok(), Some(serde_json::json!(status.as_str())));
        }
        assert_eq!(AllocationStatus::parse("Active"), None);
    }

    #[test]
    fn terminal_statuses_go_nowhere_and_live_ones_are_the_rest() {
        for from in AllocationStatus::ALL {
            if from.is_terminal() {
                assert!(AllocationStatus::ALL.iter().all(|to| !from.can_become(*to)), "{from}");
            }
            assert_eq!(AllocationStatus::LIVE.contains(from), !from.is_terminal(), "{from}");
        }
    }

    #[test]
    fn the_spec_edges_are_allowed_and_shortcuts_are_not() {
        use AllocationStatus::*;
        for (from, to) in [
            (Requested, Provisioning),
            (Provisioning, Active),
            (Provisioning, Failed),
            (Active, Releasing),
            (Releasing, Released),
            (Releasing, ReleaseFailed),
            (ReleaseFailed, Releasing),
        ] {
            assert!(from.can_become(to), "{from} → {to}");
        }
        for (from, to) in
            [(Requested, Active), (Active, Released), (Releasing, Active), (Active, Failed), (Releasing, Releasing)]
        {
            let error = from.transition(to).err();
            assert!(matches!(error, Some(AllocationError::InvalidTransition { .. })), "{from} → {to}");
        }
    }

    proptest! {
        /// Any sequence of attempted transitions, applied where allowed, keeps the
        /// allocation reachable from `requested` and never leaves a terminal status.
        #[test]
        fn any_sequence_stays_legal(steps in proptest::collection::vec(0..AllocationStatus::ALL.len(), 0..64)) {
            let mut status = AllocationStatus::Requested;
            let mut ended = false;
            for step in steps {
                let to = AllocationStatus::ALL[step];
                match status.transition(to) {
                    Ok(next) => {
                        prop_assert!(!ended, "left terminal {status} for {to}");
                        status = next;
                        ended = status.is_terminal();
                    }
                    Err(AllocationError::InvalidTransition { from, to: wanted }) => {
                        prop_assert_eq!(from, status);
                        prop_assert_eq!(wanted, to);
                    }
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
            prop_assert_eq!(ended, status.is_terminal());
        }
    }
}
