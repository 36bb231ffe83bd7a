import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function CapacityPage() {
  return <Page title="Capacity"><p>Coming soon.</p></Page>;
}
