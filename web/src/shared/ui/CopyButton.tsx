import { useState } from "react";
import { useAnnounce } from "./Announcer";

/** Copies text to the clipboard and says so, for sighted and screen-reader users. */
export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  const announce = useAnnounce();
  async function copy() {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Clipboard access can be refused (insecure origin, permissions): fall back to
      // a selection the user can copy by hand.
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    setCopied(true);
    announce("Copied to the clipboard");
    window.setTimeout(() => setCopied(false), 2000);
  }
  // The visible text stays the accessible name (a changing label that no longer
  // matches its aria-label is an accessibility failure); "Copied" is shown beside it
  // and announced.
  return (
    <>
      <button type="button" className="button button-small" onClick={() => void copy()}>
        {label}
      </button>
      {copied ? (
        <span className="muted" aria-hidden="true">
          {" "}
          Copied
        </span>
      ) : null}
    </>
  );
}
