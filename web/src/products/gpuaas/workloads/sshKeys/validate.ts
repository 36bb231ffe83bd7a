// Client-side checks of an SSH key before it is sent. The server checks properly;
// these catch the common mistakes early and, above all, never send a private key.

export const KEY_TYPES = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "ssh-rsa",
  "sk-ssh-ed25519@openssh.com",
  "sk-ecdsa-sha2-nistp256@openssh.com",
] as const;

export const MAX_KEY_NAME_CHARS = 64;

/** True when the text holds (part of) a private key: it must never leave the browser. */
export function looksLikePrivateKey(text: string): boolean {
  return /PRIVATE KEY/i.test(text) || /PuTTY-User-Key-File/i.test(text);
}

export const PRIVATE_KEY_REFUSAL =
  "This is a private key. It was not sent. Never share your private key: paste the public key instead (the .pub file, e.g. ~/.ssh/id_ed25519.pub).";

/** An error message for the public key field, or null when it looks right. */
export function checkPublicKey(raw: string): string | null {
  const text = raw.trim();
  if (text === "") return "Paste your public key.";
  if (looksLikePrivateKey(text)) return PRIVATE_KEY_REFUSAL;
  if (/[\r\n]/.test(text)) return "Paste exactly one key line.";
  const [type, body] = text.split(/\s+/);
  if (!KEY_TYPES.includes(type as (typeof KEY_TYPES)[number])) {
    return "This does not look like an OpenSSH public key. It should start with ssh-ed25519, ecdsa-sha2-…, or ssh-rsa.";
  }
  if (body === undefined || !/^[A-Za-z0-9+/]+={0,2}$/.test(body)) {
    return "The key line has no valid base64 body; paste the whole line from the .pub file.";
  }
  return null;
}

/** An error message for the key's name, or null. */
export function checkKeyName(raw: string): string | null {
  const name = raw.trim();
  if (name === "") return "Give the key a name, e.g. laptop.";
  if ([...name].length > MAX_KEY_NAME_CHARS) return `Use at most ${MAX_KEY_NAME_CHARS} characters.`;
  return null;
}
