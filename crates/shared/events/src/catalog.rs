//! Subjects and streams. Subjects follow `{owner}.{domain}.{event}`: product events start
//! with `gpuaas.`, platform events with `platform.`. Each subject belongs to exactly one
//! JetStream stream; the embedded bus uses the same catalog so both adapters agree on
//! what may be published.

/// A JetStream stream and the subject patterns it captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static [&'static str],
}

pub const DEAD_LETTER_PREFIX: &str = "dlq.";

pub const STREAMS: &[StreamSpec] = &[
    StreamSpec { name: "PROVISIONING", subjects: &["gpuaas.>"] },
    StreamSpec { name: "BILLING", subjects: &["platform.billing.>"] },
    StreamSpec { name: "PAYMENTS", subjects: &["platform.payments.>"] },
    StreamSpec {
        name: "PLATFORM",
        subjects: &["platform.iam.>", "platform.audit.>", "platform.policy.>", "platform.notification.>"],
    },
    StreamSpec { name: "DLQ", subjects: &["dlq.>"] },
];

/// The stream that captures `subject` (or, for a filter, every subject it matches).
pub fn stream_for(subject: &str) -> Option<&'static StreamSpec> {
    STREAMS.iter().find(|stream| stream.subjects.iter().any(|pattern| pattern_covers(pattern, subject)))
}

/// The subject a dead-lettered copy of `subject` is published on.
pub fn dead_letter_subject(subject: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{subject}")
}

/// NATS subject matching: `*` matches one token, a trailing `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(expected), Some(actual)) if expected == actual => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when every subject matched by `filter` is also matched by `pattern`; used to
/// find the one stream a consumer filter lives in.
fn pattern_covers(pattern: &str, filter: &str) -> bool {
    let pattern_tokens: Vec<&str> = pattern.split('.').collect();
    let filter_tokens: Vec<&str> = filter.split('.').collect();
    for (index, expected) in pattern_tokens.iter().enumerate() {
        match (*expected, filter_tokens.get(index)) {
            (">", Some(_)) => return true,
            ("*", Some(&actual)) if actual != ">" => {}
            (expected, Some(&actual)) if expected == actual => {}
            _ => return false,
        }
    }
    filter_tokens.len() == pattern_tokens.len()
}

/// A subject is publishable when it has at least three non-empty tokens without
/// wildcards and exactly one stream captures it.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() < 3 || tokens.iter().any(|t| t.is_empty() || *t == "*" || *t == ">") {
        return Err(format!("`{subject}` is not a concrete subject of the form owner.domain.event"));
    }
    if !tokens.iter().all(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
        return Err(format!("`{subject}` has characters outside [A-Za-z0-9_-]"));
    }
    match STREAMS.iter().filter(|s| s.subjects.iter().any(|p| subject_matches(p, subject))).count() {
        1 => Ok(()),
        0 => Err(format!("no stream captures `{subject}`")),
        _ => Err(format!("more than one stream captures `{subject}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("gpuaas.>", "gpuaas.provisioning.requested"));
        assert!(subject_matches("gpuaas.*.requested", "gpuaas.provisioning.requested"));
        assert!(!subject_matches("gpuaas.*", "gpuaas.provisioning.requested"));
        assert!(!subject_matches("gpuaas.>", "gpuaas"));
        assert!(subject_matches("a.b.c", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b.d"));
    }

    #[test]
    fn every_subject_lands_in_exactly_one_stream() {
        for subject in [
            "gpuaas.provisioning.requested",
            "gpuaas.inventory.node_offline",
            "platform.billing.low_balance_warning",
            "platform.payments.balance_credited",
            "platform.iam.user_created",
            "dlq.gpuaas.provisioning.requested",
        ] {
            assert_eq!(validate_subject(subject), Ok(()), "{subject}");
        }
        assert!(validate_subject("elsewhere.thing.happened").is_err());
        assert!(validate_subject("gpuaas.>").is_err());
        assert!(validate_subject("gpuaas..x").is_err());
    }

    #[test]
    fn stream_patterns_never_overlap() {
        for (i, left) in STREAMS.iter().enumerate() {
            for right in &STREAMS[i + 1..] {
                for l in left.subjects {
                    for r in right.subjects {
                        assert!(!pattern_covers(l, r) && !pattern_covers(r, l), "{l} overlaps {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn filters_find_their_stream() {
        assert_eq!(stream_for("gpuaas.provisioning.>").map(|s| s.name), Some("PROVISIONING"));
        assert_eq!(stream_for("platform.billing.*").map(|s| s.name), Some("BILLING"));
        assert_eq!(stream_for("dlq.>").map(|s| s.name), Some("DLQ"));
        assert_eq!(stream_for("platform.>"), None);
    }
}
