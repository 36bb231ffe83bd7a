import { describe, expect, it } from "vitest";
import { PRIVATE_KEY_REFUSAL, checkKeyName, checkPublicKey, looksLikePrivateKey } from "./validate";

const ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@laptop";

describe("checkPublicKey", () => {
  it("accepts OpenSSH public key lines", () => {
    expect(checkPublicKey(ED25519)).toBeNull();
    expect(checkPublicKey(`  ${ED25519}\n`)).toBeNull();
    expect(checkPublicKey("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=")).toBeNull();
    expect(checkPublicKey("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ==")).toBeNull();
  });

  it("refuses private keys without ever accepting them", () => {
    const pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
    expect(looksLikePrivateKey(pem)).toBe(true);
    expect(checkPublicKey(pem)).toBe(PRIVATE_KEY_REFUSAL);
    expect(checkPublicKey("-----BEGIN RSA PRIVATE KEY-----")).toBe(PRIVATE_KEY_REFUSAL);
  });

  it("explains other mistakes", () => {
    expect(checkPublicKey("")).toMatch(/Paste/);
    expect(checkPublicKey("hello world")).toMatch(/does not look like/);
    expect(checkPublicKey("ssh-ed25519")).toMatch(/base64/);
    expect(checkPublicKey(`${ED25519}\n${ED25519}`)).toMatch(/one key line/);
  });
});

describe("checkKeyName", () => {
  it("requires 1 to 64 characters", () => {
    expect(checkKeyName(" ")).not.toBeNull();
    expect(checkKeyName("laptop")).toBeNull();
    expect(checkKeyName("x".repeat(65))).not.toBeNull();
  });
});
