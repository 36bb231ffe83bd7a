//! Roles and permissions: the one place that decides who may do what.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

string_enum! {
    /// Platform-wide role of a user.
    GlobalRole { Admin => "admin", BillingOperator => "billing_operator", User => "user" }
}

string_enum! {
    /// A user's role in their tenant (organisation).
    TenantRole { Owner => "owner", Member => "member" }
}

string_enum! {
    /// A user's role in one project.
    ProjectRole { Admin => "admin", Member => "member", Viewer => "viewer" }
}

string_enum! {
    /// Who is acting: a person or a machine identity.
    ActorType { User => "user", ServiceAccount => "service_account" }
}

/// What a route requires. Every route declares exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// No credentials needed (health, discovery, sign-in).
    Public,
    /// Any signed-in user or service account.
    Authenticated,
    /// Read a project's resources (object-level membership checked by the handler).
    ProjectRead,
    /// Create or change a project's resources.
    ProjectWrite,
    /// Manage a project: members, service accounts.
    ProjectAdmin,
    /// Operator reads: users, nodes, audit.
    AdminRead,
    /// Operator writes: users, nodes, signing keys.
    AdminWrite,
    /// Refunds and credit adjustments.
    BillingOperate,
}

impl Permission {
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Authenticated => "authenticated",
            Permission::ProjectRead => "project:read",
            Permission::ProjectWrite => "project:write",
            Permission::ProjectAdmin => "project:admin",
            Permission::AdminRead => "admin:read",
            Permission::AdminWrite => "admin:write",
            Permission::BillingOperate => "billing:operate",
        }
    }

    /// Whether the route belongs to the operator surface.
    pub const fn is_operator_only(self) -> bool {
        matches!(self, Permission::AdminRead | Permission::AdminWrite | Permission::BillingOperate)
    }
}

/// Scopes a service account may hold; each maps to one project permission.
pub const SERVICE_ACCOUNT_SCOPES: &[&str] = &["project:read", "project:write"];

impl GlobalRole {
    /// The global half of authorization: may this role reach a route with `permission`?
    /// Project routes still need a membership, which handlers check per object.
    pub fn grants(self, permission: Permission) -> bool {
        match permission {
            Permission::Public | Permission::Authenticated => true,
            Permission::ProjectRead | Permission::ProjectWrite | Permission::ProjectAdmin => true,
            Permission::AdminRead | Permission::AdminWrite => self == GlobalRole::Admin,
            Permission::BillingOperate => matches!(self, GlobalRole::Admin | GlobalRole::BillingOperator),
        }
    }
}

impl ProjectRole {
    pub fn grants(self, permission: Permission) -> bool {
        match permission {
            Permission::ProjectRead => true,
            Permission::ProjectWrite => matches!(self, ProjectRole::Admin | ProjectRole::Member),
            Permission::ProjectAdmin => self == ProjectRole::Admin,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_reach_operator_routes() {
        for permission in [Permission::AdminRead, Permission::AdminWrite] {
            assert!(GlobalRole::Admin.grants(permission));
            assert!(!GlobalRole::User.grants(permission));
            assert!(!GlobalRole::BillingOperator.grants(permission));
        }
        assert!(GlobalRole::BillingOperator.grants(Permission::BillingOperate));
        assert!(!GlobalRole::User.grants(Permission::BillingOperate));
    }

    #[test]
    fn project_roles_are_ordered() {
        assert!(ProjectRole::Viewer.grants(Permission::ProjectRead));
        assert!(!ProjectRole::Viewer.grants(Permission::ProjectWrite));
        assert!(ProjectRole::Member.grants(Permission::ProjectWrite));
        assert!(!ProjectRole::Member.grants(Permission::ProjectAdmin));
        assert!(ProjectRole::Admin.grants(Permission::ProjectAdmin));
        assert!(!ProjectRole::Admin.grants(Permission::AdminRead));
    }

    #[test]
    fn role_names_round_trip() {
        for role in GlobalRole::ALL {
            assert_eq!(GlobalRole::parse(role.as_str()), Some(*role));
        }
        assert_eq!(GlobalRole::parse("root"), None);
    }
}
