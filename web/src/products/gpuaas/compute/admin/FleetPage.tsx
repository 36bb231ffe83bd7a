import { Page } from "../../../../shared/ui/Page";

// Placeholder until this page is written.
export default function FleetPage() {
  return <Page title="Fleet"><p>Coming soon.</p></Page>;
}
