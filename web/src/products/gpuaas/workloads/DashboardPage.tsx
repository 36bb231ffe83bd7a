import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function DashboardPage() {
  return <Page title="Dashboard"><p>Coming soon.</p></Page>;
}
