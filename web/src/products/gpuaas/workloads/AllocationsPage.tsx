import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function AllocationsPage() {
  return <Page title="Allocations"><p>Coming soon.</p></Page>;
}
