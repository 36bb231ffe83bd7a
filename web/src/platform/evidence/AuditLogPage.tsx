import { Page } from "../../shared/ui/Page";

// Placeholder until this page is written.
export default function AuditLogPage() {
  return <Page title="Audit log"><p>Coming soon.</p></Page>;
}
