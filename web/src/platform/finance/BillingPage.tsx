import { Page } from "../../shared/ui/Page";

// Placeholder until this page is written.
export default function BillingPage() {
  return <Page title="Billing"><p>Coming soon.</p></Page>;
}
