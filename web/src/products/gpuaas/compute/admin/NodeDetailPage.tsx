import { Page } from "../../../../shared/ui/Page";

// Placeholder until this page is written.
export default function NodeDetailPage() {
  return <Page title="Node"><p>Coming soon.</p></Page>;
}
