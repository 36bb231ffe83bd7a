// A minimal OpenID Connect provider for the browser run: discovery, an authorize
// endpoint that signs the person in at once and redirects back with a code, a token
// endpoint that checks the PKCE verifier and answers an Ed25519-signed ID token with
// the flow's nonce, and the JWKS. It exists so the portal's SSO path (redirect, PKCE,
// return to /auth/callback) runs end to end in a real browser.

import { createHash, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { createServer } from "node:http";

const b64url = (buffer) => Buffer.from(buffer).toString("base64url");

export async function startFakeOidc({ clientId, person }) {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const kid = "e2e-key";
  const jwk = { ...publicKey.export({ format: "jwk" }), kid, alg: "EdDSA", use: "sig" };
  const flows = new Map();
  const seen = { authorize: 0, token: 0, pkceChecked: 0 };
  let issuer = "";

  const server = createServer((request, response) => {
    const url = new URL(request.url, issuer);
    const json = (status, body) => {
      response.writeHead(status, { "Content-Type": "application/json" });
      response.end(JSON.stringify(body));
    };
    if (url.pathname === "/.well-known/openid-configuration") {
      return json(200, {
        issuer,
        authorization_endpoint: `${issuer}/authorize`,
        token_endpoint: `${issuer}/token`,
        jwks_uri: `${issuer}/jwks`,
        response_types_supported: ["code"],
        id_token_signing_alg_values_supported: ["EdDSA"],
        code_challenge_methods_supported: ["S256"],
      });
    }
    if (url.pathname === "/jwks") return json(200, { keys: [jwk] });
    if (url.pathname === "/authorize") {
      seen.authorize += 1;
      const q = url.searchParams;
      if (q.get("client_id") !== clientId || q.get("code_challenge_method") !== "S256" || !q.get("code_challenge")) {
        return json(400, { error: "invalid_request" });
      }
      const code = b64url(randomBytes(24));
      flows.set(code, { nonce: q.get("nonce"), challenge: q.get("code_challenge"), redirectUri: q.get("redirect_uri") });
      const back = new URL(q.get("redirect_uri"));
      back.searchParams.set("code", code);
      back.searchParams.set("state", q.get("state") ?? "");
      response.writeHead(302, { Location: back.toString() });
      return response.end();
    }
    if (url.pathname === "/token" && request.method === "POST") {
      seen.token += 1;
      let body = "";
      request.on("data", (chunk) => (body += chunk));
      request.on("end", () => {
        const form = new URLSearchParams(body);
        const flow = flows.get(form.get("code") ?? "");
        flows.delete(form.get("code") ?? "");
        if (!flow || form.get("redirect_uri") !== flow.redirectUri) return json(400, { error: "invalid_grant" });
        const challenge = b64url(createHash("sha256").update(form.get("code_verifier") ?? "").digest());
        if (challenge !== flow.challenge) return json(400, { error: "invalid_grant", error_description: "PKCE verifier" });
        seen.pkceChecked += 1;
        const now = Math.floor(Date.now() / 1000);
        const header = b64url(JSON.stringify({ alg: "EdDSA", kid, typ: "JWT" }));
        const claims = b64url(
          JSON.stringify({
            iss: issuer,
            aud: clientId,
            sub: person.subject,
            email: person.email,
            name: person.name,
            nonce: flow.nonce,
            iat: now,
            exp: now + 300,
          }),
        );
        const signature = b64url(sign(null, Buffer.from(`${header}.${claims}`), privateKey));
        return json(200, { access_token: b64url(randomBytes(16)), token_type: "Bearer", expires_in: 300, id_token: `${header}.${claims}.${signature}` });
      });
      return undefined;
    }
    return json(404, { error: "not_found" });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  issuer = `http://127.0.0.1:${server.address().port}`;
  return { issuer, seen, close: () => new Promise((resolve) => server.close(resolve)) };
}
