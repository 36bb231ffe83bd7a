import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function PaymentSessionsPage() {
  return <Page title="Payment sessions"><p>Coming soon.</p></Page>;
}
