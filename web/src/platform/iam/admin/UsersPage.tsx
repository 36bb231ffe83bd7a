import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function UsersPage() {
  return <Page title="Users"><p>Coming soon.</p></Page>;
}
