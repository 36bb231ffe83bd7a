import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function AllocationDetailPage() {
  return <Page title="Allocation"><p>Coming soon.</p></Page>;
}
