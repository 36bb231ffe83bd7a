import { Page } from "../../../shared/ui/Page";

// Placeholder until this page is written.
export default function SshKeysPage() {
  return <Page title="SSH keys"><p>Coming soon.</p></Page>;
}
