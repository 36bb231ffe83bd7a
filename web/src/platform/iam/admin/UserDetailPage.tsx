import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function UserDetailPage() {
  return <Page title="User"><p>Coming soon.</p></Page>;
}
