import { Page } from "../../../../shared/ui/Page";

// Placeholder until this page is written.
export default function ReconciliationPage() {
  return <Page title="Reconciliation"><p>Coming soon.</p></Page>;
}
