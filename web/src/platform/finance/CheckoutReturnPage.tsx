import { Page } from "../../shared/ui/Page";

// Placeholder until this page is written.
export default function CheckoutReturnPage() {
  return <Page title="Top-up"><p>Coming soon.</p></Page>;
}
