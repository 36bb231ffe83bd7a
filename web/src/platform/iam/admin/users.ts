// Words for user records, shared by the user list and the user page.

export const ROLE_LABELS: Record<string, string> = {
  user: "User",
  admin: "Admin",
  billing_operator: "Billing operator",
};

export function roleLabel(role: string): string {
  return ROLE_LABELS[role] ?? role.replace(/_/g, " ");
}

export function signInLabel(identitySource: string): string {
  return identitySource === "local" ? "Password" : `Single sign-on (${identitySource})`;
}
