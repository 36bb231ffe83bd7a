//! Canonical resource identifiers: `{prefix}:{region}:{tenant}:{project}:{type}:{id}`.
//!
//! One text names any resource across regions and tenants, so audit logs, policies and
//! cross-service references all speak the same form. The prefix defaults to `gpuaas`;
//! an operator may brand it (`core42:aicloud`), which is why the prefix may itself hold
//! `:` and parsing always goes through a [`ResourceIdFormat`] that knows it.
//!
//! Every segment is 1..=128 characters of `[A-Za-z0-9._-]`. `-` alone in the tenant or
//! project segment means "none" (a node, a user without a tenant); it is refused
//! everywhere else. Parsing never trusts its input: it is bounded in length, checked
//! character by character, and an error names the offending segment without echoing
//! anything that failed the character check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The prefix used when the operator configures none.
pub const DEFAULT_PREFIX: &str = "gpuaas";
/// The region used when the operator configures none (a single-region install).
pub const DEFAULT_REGION: &str = "local";
/// The tenant or project segment of a resource that has no tenant or no project.
pub const NONE_SEGMENT: &str = "-";
/// Longest single segment (prefix parts included).
pub const MAX_SEGMENT_LEN: usize = 128;
/// Most `:`-separated parts a prefix may have; more is a configuration mistake.
pub const MAX_PREFIX_PARTS: usize = 4;
/// Segments after the prefix: region, tenant, project, type, id.
const BODY_SEGMENTS: usize = 5;

/// The kinds of resource a canonical id can name. Unknown kinds are an error, so a
/// typo never yields an id nothing will ever match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Tenant,
    Project,
    User,
    ServiceAccount,
    Node,
    Allocation,
    SshKey,
    Sku,
    Invoice,
    Payment,
    AuditLog,
    Policy,
    SigningKey,
}

impl ResourceType {
    pub const ALL: &'static [ResourceType] = &[
        ResourceType::Tenant,
        ResourceType::Project,
        ResourceType::User,
        ResourceType::ServiceAccount,
        ResourceType::Node,
        ResourceType::Allocation,
        ResourceType::SshKey,
        ResourceType::Sku,
        ResourceType::Invoice,
        ResourceType::Payment,
        ResourceType::AuditLog,
        ResourceType::Policy,
        ResourceType::SigningKey,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceType::Tenant => "tenant",
            ResourceType::Project => "project",
            ResourceType::User => "user",
            ResourceType::ServiceAccount => "service_account",
            ResourceType::Node => "node",
            ResourceType::Allocation => "allocation",
            ResourceType::SshKey => "ssh_key",
            ResourceType::Sku => "sku",
            ResourceType::Invoice => "invoice",
            ResourceType::Payment => "payment",
            ResourceType::AuditLog => "audit_log",
            ResourceType::Policy => "policy",
            ResourceType::SigningKey => "signing_key",
        }
    }
}

impl FromStr for ResourceType {
    type Err = ResourceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Checked as a segment first so the error below only ever echoes safe text.
        check_segment(Segment::Type, text)?;
        ResourceType::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| ResourceIdError::UnknownResourceType(text.to_owned()))
    }
}

/// Which part of a resource id an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Prefix,
    Region,
    Tenant,
    Project,
    Type,
    Id,
}

impl Segment {
    const fn allows_placeholder(self) -> bool {
        matches!(self, Segment::Tenant | Segment::Project)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Segment::Prefix => "prefix",
            Segment::Region => "region",
            Segment::Tenant => "tenant",
            Segment::Project => "project",
            Segment::Type => "type",
            Segment::Id => "id",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceIdError {
    #[error("resource id is longer than {max} characters")]
    TooLong { max: usize },
    #[error("resource id does not start with the prefix `{expected}:`")]
    WrongPrefix { expected: String },
    #[error(
        "resource id needs {BODY_SEGMENTS} segments after the prefix (region:tenant:project:type:id), found {found}"
    )]
    WrongSegmentCount { found: usize },
    #[error("the {0} segment is empty")]
    EmptySegment(Segment),
    #[error("the {0} segment is longer than {MAX_SEGMENT_LEN} characters")]
    SegmentTooLong(Segment),
    #[error("the {0} segment may only contain A-Z, a-z, 0-9, '.', '_' and '-'")]
    InvalidCharacter(Segment),
    #[error("the {0} segment may not consist of dots only")]
    DotsOnly(Segment),
    #[error("the {0} segment may not be the placeholder `-`")]
    PlaceholderNotAllowed(Segment),
    #[error("the prefix has more than {MAX_PREFIX_PARTS} parts")]
    PrefixTooLong,
    #[error("unknown resource type `{0}`")]
    UnknownResourceType(String),
    #[error("a resource with a project must also have a tenant")]
    ProjectWithoutTenant,
}

/// A parsed or constructed canonical resource id. Fields are private so every value
/// is valid: [`ResourceIdFormat::format`] of it always parses back to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceId {
    region: String,
    tenant: Option<String>,
    project: Option<String>,
    resource_type: ResourceType,
    id: String,
}

impl ResourceId {
    /// A resource that belongs to no tenant (a node, a SKU, a user without a tenant).
    pub fn global(
        region: impl Into<String>,
        resource_type: ResourceType,
        id: impl Into<String>,
    ) -> Result<Self, ResourceIdError> {
        Self::new(region, None::<String>, None::<String>, resource_type, id)
    }

    /// A resource owned by a tenant but by no project (a tenant's invoice, its users).
    pub fn tenant_scoped(
        region: impl Into<String>,
        tenant: impl Into<String>,
        resource_type: ResourceType,
        id: impl Into<String>,
    ) -> Result<Self, ResourceIdError> {
        Self::new(region, Some(tenant), None::<String>, resource_type, id)
    }

    /// A resource inside one project of one tenant (an allocation, an SSH key).
    pub fn project_scoped(
        region: impl Into<String>,
        tenant: impl Into<String>,
        project: impl Into<String>,
        resource_type: ResourceType,
        id: impl Into<String>,
    ) -> Result<Self, ResourceIdError> {
        Self::new(region, Some(tenant), Some(project), resource_type, id)
    }

    /// The general constructor; `None` tenant or project is written as `-`.
    pub fn new(
        region: impl Into<String>,
        tenant: Option<impl Into<String>>,
        project: Option<impl Into<String>>,
        resource_type: ResourceType,
        id: impl Into<String>,
    ) -> Result<Self, ResourceIdError> {
        let region = region.into();
        let tenant = tenant.map(Into::into);
        let project = project.map(Into::into);
        let id = id.into();
        check_segment(Segment::Region, &region)?;
        for (segment, value) in [(Segment::Tenant, &tenant), (Segment::Project, &project)] {
            if let Some(value) = value {
                check_segment(segment, value)?;
                // `-` means "none"; as a real name it would read back as None.
                if value == NONE_SEGMENT {
                    return Err(ResourceIdError::PlaceholderNotAllowed(segment));
                }
            }
        }
        check_segment(Segment::Id, &id)?;
        if tenant.is_none() && project.is_some() {
            return Err(ResourceIdError::ProjectWithoutTenant);
        }
        Ok(Self { region, tenant, project, resource_type, id })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    pub fn resource_type(&self) -> ResourceType {
        self.resource_type
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The canonical text under `format`'s prefix. There is deliberately no `Display`:
    /// the prefix is deployment configuration, so the caller must say which one.
    pub fn format(&self, format: &ResourceIdFormat) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}",
            format.prefix,
            self.region,
            self.tenant.as_deref().unwrap_or(NONE_SEGMENT),
            self.project.as_deref().unwrap_or(NONE_SEGMENT),
            self.resource_type.as_str(),
            self.id
        )
    }
}

/// The deployment's id settings: the prefix every id carries and the region this
/// installation creates resources in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceIdFormat {
    prefix: String,
    region: String,
    /// `prefix.len() + 1 + 5 * MAX_SEGMENT_LEN + 4`, so oversized input is refused
    /// before it is split.
    max_len: usize,
}

impl ResourceIdFormat {
    pub fn new(prefix: impl Into<String>, region: impl Into<String>) -> Result<Self, ResourceIdError> {
        let prefix = prefix.into();
        let region = region.into();
        let parts: Vec<&str> = prefix.split(':').collect();
        if parts.len() > MAX_PREFIX_PARTS {
            return Err(ResourceIdError::PrefixTooLong);
        }
        for part in parts {
            check_segment(Segment::Prefix, part)?;
        }
        check_segment(Segment::Region, &region)?;
        let max_len = prefix.len() + 1 + BODY_SEGMENTS * MAX_SEGMENT_LEN + (BODY_SEGMENTS - 1);
        Ok(Self { prefix, region, max_len })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The region this installation creates resources in; pass it to the
    /// [`ResourceId`] constructors.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The canonical text of a resource in this installation's region, as audit rows
    /// and events name it. Ids the platform generates always fit; anything else keeps
    /// a plain `type:id` rather than losing the row that names it.
    pub fn name(&self, tenant: Option<&str>, project: Option<&str>, resource_type: ResourceType, id: &str) -> String {
        match ResourceId::new(self.region(), tenant, project, resource_type, id) {
            Ok(resource) => resource.format(self),
            Err(_) => format!("{}:{id}", resource_type.as_str()),
        }
    }

    /// Parses `text` written under this format's prefix. Any valid region is accepted
    /// (an id may name a resource in another region); compare [`ResourceId::region`]
    /// with [`ResourceIdFormat::region`] where only local resources make sense.
    pub fn parse(&self, text: &str) -> Result<ResourceId, ResourceIdError> {
        if text.len() > self.max_len {
            return Err(ResourceIdError::TooLong { max: self.max_len });
        }
        let body = text
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .ok_or_else(|| ResourceIdError::WrongPrefix { expected: self.prefix.clone() })?;
        let segments: Vec<&str> = body.split(':').collect();
        let [region, tenant, project, kind, id] = segments.as_slice() else {
            return Err(ResourceIdError::WrongSegmentCount { found: segments.len() });
        };
        check_segment(Segment::Region, region)?;
        check_segment(Segment::Tenant, tenant)?;
        check_segment(Segment::Project, project)?;
        let resource_type = kind.parse::<ResourceType>()?;
        let placeholder_to_none = |value: &str| (value != NONE_SEGMENT).then(|| value.to_owned());
        ResourceId::new(*region, placeholder_to_none(tenant), placeholder_to_none(project), resource_type, *id)
    }
}

impl Default for ResourceIdFormat {
    fn default() -> Self {
        let max_len = DEFAULT_PREFIX.len() + 1 + BODY_SEGMENTS * MAX_SEGMENT_LEN + (BODY_SEGMENTS - 1);
        Self { prefix: DEFAULT_PREFIX.to_owned(), region: DEFAULT_REGION.to_owned(), max_len }
    }
}

fn check_segment(segment: Segment, value: &str) -> Result<(), ResourceIdError> {
    if value.is_empty() {
        return Err(ResourceIdError::EmptySegment(segment));
    }
    if value.len() > MAX_SEGMENT_LEN {
        return Err(ResourceIdError::SegmentTooLong(segment));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(ResourceIdError::InvalidCharacter(segment));
    }
    // `.` and `..` would turn into path traversal wherever an id ends up in a URL path
    // or a file name.
    if value.bytes().all(|b| b == b'.') {
        return Err(ResourceIdError::DotsOnly(segment));
    }
    if value == NONE_SEGMENT && !segment.allows_placeholder() {
        return Err(ResourceIdError::PlaceholderNotAllowed(segment));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ok<T, E: fmt::Display>(result: Result<T, E>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn formats_and_parses_the_canonical_forms() {
        let format = ResourceIdFormat::default();
        let node = ok(ResourceId::global("local", ResourceType::Node, "n-1"));
        assert_eq!(node.format(&format), "gpuaas:local:-:-:node:n-1");
        let invoice = ok(ResourceId::tenant_scoped("local", "t1", ResourceType::Invoice, "inv_7"));
        assert_eq!(invoice.format(&format), "gpuaas:local:t1:-:invoice:inv_7");
        let alloc = ok(ResourceId::project_scoped("eu-1", "t1", "p.2", ResourceType::Allocation, "a1"));
        assert_eq!(alloc.format(&format), "gpuaas:eu-1:t1:p.2:allocation:a1");
        for id in [node, invoice, alloc] {
            assert_eq!(format.parse(&id.format(&format)), Ok(id));
        }
        let parsed = ok(format.parse("gpuaas:local:t1:-:service_account:sa-1"));
        assert_eq!(parsed.tenant(), Some("t1"));
        assert_eq!(parsed.project(), None);
        assert_eq!(parsed.resource_type(), ResourceType::ServiceAccount);
        assert_eq!(parsed.id(), "sa-1");
        assert_eq!(parsed.region(), "local");
    }

    #[test]
    fn prefix_may_contain_colons() {
        let format = ok(ResourceIdFormat::new("core42:aicloud", "uae-1"));
        let key = ok(ResourceId::project_scoped(format.region(), "t", "p", ResourceType::SshKey, "k"));
        let text = key.format(&format);
        assert_eq!(text, "core42:aicloud:uae-1:t:p:ssh_key:k");
        assert_eq!(format.parse(&text), Ok(key));
        // The same text under another prefix is not ours.
        assert!(matches!(ResourceIdFormat::default().parse(&text), Err(ResourceIdError::WrongPrefix { .. })));
        // Half of a compound prefix is not enough.
        assert!(matches!(format.parse("core42:uae-1:t:p:ssh_key:k"), Err(ResourceIdError::WrongPrefix { .. })));
    }

    #[test]
    fn names_are_canonical_in_the_local_region_and_never_lost() {
        let format = ok(ResourceIdFormat::new("core42:aicloud", "uae-1"));
        let name = format.name(Some("t"), None, ResourceType::Allocation, "a1");
        assert_eq!(format.parse(&name).map(|id| id.id().to_owned()), Ok("a1".to_owned()));
        assert!(name.starts_with("core42:aicloud:uae-1:t:"), "{name}");
        // An id that cannot be a segment still names its resource.
        assert_eq!(format.name(None, None, ResourceType::Allocation, "a b"), "allocation:a b");
    }

    #[test]
    fn resource_types_round_trip_and_unknown_types_fail() {
        for kind in ResourceType::ALL {
            assert_eq!(kind.as_str().parse::<ResourceType>(), Ok(*kind));
            let json = serde_json::to_string(kind).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!("gpu".parse::<ResourceType>(), Err(ResourceIdError::UnknownResourceType("gpu".into())));
        assert_eq!("Node".parse::<ResourceType>(), Err(ResourceIdError::UnknownResourceType("Node".into())));
        assert_eq!("no de".parse::<ResourceType>(), Err(ResourceIdError::InvalidCharacter(Segment::Type)));
        assert_eq!(
            ResourceIdFormat::default().parse("gpuaas:local:-:-:gpu:1"),
            Err(ResourceIdError::UnknownResourceType("gpu".into()))
        );
    }

    #[test]
    fn refuses_hostile_and_malformed_input() {
        use ResourceIdError as E;
        let format = ResourceIdFormat::default();
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        let cases: Vec<(String, ResourceIdError)> = vec![
            (String::new(), E::WrongPrefix { expected: "gpuaas".into() }),
            ("gpuaas".into(), E::WrongPrefix { expected: "gpuaas".into() }),
            ("gpuaasx:local:-:-:node:1".into(), E::WrongPrefix { expected: "gpuaas".into() }),
            (" gpuaas:local:-:-:node:1".into(), E::WrongPrefix { expected: "gpuaas".into() }),
            ("GPUAAS:local:-:-:node:1".into(), E::WrongPrefix { expected: "gpuaas".into() }),
            ("gpuaas:".into(), E::WrongSegmentCount { found: 1 }),
            ("gpuaas:local:-:-:node".into(), E::WrongSegmentCount { found: 4 }),
            ("gpuaas:local:-:-:node:1:".into(), E::WrongSegmentCount { found: 6 }),
            ("gpuaas:local:-:-:node:1:extra".into(), E::WrongSegmentCount { found: 6 }),
            ("gpuaas:local:-:-:node:".into(), E::EmptySegment(Segment::Id)),
            ("gpuaas::-:-:node:1".into(), E::EmptySegment(Segment::Region)),
            ("gpuaas:local::-:node:1".into(), E::EmptySegment(Segment::Tenant)),
            ("gpuaas:local:-:-:node:1 ".into(), E::InvalidCharacter(Segment::Id)),
            ("gpuaas:local:-:-:node:1\n".into(), E::InvalidCharacter(Segment::Id)),
            ("gpuaas:local:-:-:node:1\0".into(), E::InvalidCharacter(Segment::Id)),
            ("gpuaas:local:t/../x:-:node:1".into(), E::InvalidCharacter(Segment::Tenant)),
            ("gpuaas:local:t%3A:-:node:1".into(), E::InvalidCharacter(Segment::Tenant)),
            ("gpuaas:local:t':-:node:1".into(), E::InvalidCharacter(Segment::Tenant)),
            ("gpuaas:lócal:-:-:node:1".into(), E::InvalidCharacter(Segment::Region)),
            ("gpuaas:local:-:-:node:..".into(), E::DotsOnly(Segment::Id)),
            ("gpuaas:.:-:-:node:1".into(), E::DotsOnly(Segment::Region)),
            ("gpuaas:-:-:-:node:1".into(), E::PlaceholderNotAllowed(Segment::Region)),
            ("gpuaas:local:-:-:node:-".into(), E::PlaceholderNotAllowed(Segment::Id)),
            ("gpuaas:local:-:-:-:1".into(), E::PlaceholderNotAllowed(Segment::Type)),
            ("gpuaas:local:-:p:allocation:1".into(), E::ProjectWithoutTenant),
            (format!("gpuaas:local:{long}:-:node:1"), E::SegmentTooLong(Segment::Tenant)),
            (format!("gpuaas:local:-:-:node:{}", "a".repeat(2000)), E::TooLong { max: 6 + 1 + 5 * 128 + 4 }),
        ];
        for (text, expected) in cases {
            assert_eq!(format.parse(&text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn constructors_validate_their_segments() {
        use ResourceIdError as E;
        assert_eq!(ResourceId::global("", ResourceType::Node, "n").err(), Some(E::EmptySegment(Segment::Region)));
        assert_eq!(ResourceId::global("r", ResourceType::Node, "a:b").err(), Some(E::InvalidCharacter(Segment::Id)));
        assert_eq!(
            ResourceId::tenant_scoped("r", "-", ResourceType::User, "u").err(),
            Some(E::PlaceholderNotAllowed(Segment::Tenant))
        );
        assert_eq!(
            ResourceId::project_scoped("r", "t", "-", ResourceType::Allocation, "a").err(),
            Some(E::PlaceholderNotAllowed(Segment::Project))
        );
        assert_eq!(
            ResourceId::new("r", None::<String>, Some("p"), ResourceType::Allocation, "a").err(),
            Some(E::ProjectWithoutTenant)
        );
    }

    #[test]
    fn format_settings_are_validated() {
        use ResourceIdError as E;
        assert_eq!(ResourceIdFormat::new("", "r").err(), Some(E::EmptySegment(Segment::Prefix)));
        assert_eq!(ResourceIdFormat::new("a::b", "r").err(), Some(E::EmptySegment(Segment::Prefix)));
        assert_eq!(ResourceIdFormat::new("a:", "r").err(), Some(E::EmptySegment(Segment::Prefix)));
        assert_eq!(ResourceIdFormat::new("a b", "r").err(), Some(E::InvalidCharacter(Segment::Prefix)));
        assert_eq!(ResourceIdFormat::new("a:b:c:d:e", "r").err(), Some(E::PrefixTooLong));
        assert_eq!(ResourceIdFormat::new("gpuaas", "").err(), Some(E::EmptySegment(Segment::Region)));
        assert_eq!(ResourceIdFormat::new("gpuaas", "-").err(), Some(E::PlaceholderNotAllowed(Segment::Region)));
        let default = ResourceIdFormat::default();
        assert_eq!(Ok(default.clone()), ResourceIdFormat::new(DEFAULT_PREFIX, DEFAULT_REGION));
        assert_eq!((default.prefix(), default.region()), ("gpuaas", "local"));
    }

    const SEGMENT: &str = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}";

    fn resource_type() -> impl Strategy<Value = ResourceType> {
        proptest::sample::select(ResourceType::ALL)
    }

    proptest! {
        #[test]
        fn round_trips(
            prefix in proptest::collection::vec(SEGMENT, 1..=MAX_PREFIX_PARTS),
            region in SEGMENT,
            tenant in proptest::option::of(SEGMENT),
            project in proptest::option::of(SEGMENT),
            kind in resource_type(),
            id in SEGMENT,
        ) {
            let format = ResourceIdFormat::new(prefix.join(":"), region.clone())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let project = if tenant.is_some() { project } else { None };
            let resource = ResourceId::new(region, tenant, project, kind, id)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = resource.format(&format);
            let parsed = format.parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed.format(&format), text);
            prop_assert_eq!(parsed, resource);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,900}") {
            let format = ResourceIdFormat::default();
            if let Ok(parsed) = format.parse(&text) {
                // Whatever parses is canonical: it formats back to the very same text.
                prop_assert_eq!(parsed.format(&format), text);
            }
        }

        #[test]
        fn near_misses_never_panic_and_stay_canonical(
            parts in proptest::collection::vec("[A-Za-z0-9._:\\- -]{0,12}", 0..9),
        ) {
            let format = ok(ResourceIdFormat::new("core42:aicloud", "r"));
            let text = format!("core42:aicloud:{}", parts.join(":"));
            if let Ok(parsed) = format.parse(&text) {
                prop_assert_eq!(parsed.format(&format), text);
            }
        }
    }
}
