import { Page } from "../../../../shared/ui/Page";

// Placeholder until this page is written.
export default function AdminAllocationsPage() {
  return <Page title="All allocations"><p>Coming soon.</p></Page>;
}
