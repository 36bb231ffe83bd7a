import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function CreateAllocationPage() {
  return <Page title="New allocation"><p>Coming soon.</p></Page>;
}
