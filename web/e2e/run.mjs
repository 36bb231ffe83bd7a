// The portal's end-to-end run: a real `gpuaas up` (SQLite, built-in identity, the
// built portal) and a node simulated by `gpuaas-agent sim`, driven in headless
// Chromium. An operator creates a SKU and registers a node through the UI, enrolls
// the simulated agent with the command the UI shows, creates and credits a user; the
// user adds an SSH key, creates an allocation, watches it become active, copies the
// SSH command, releases it and sees the charge in billing; the operator then reads
// the audit trail. Every page is checked with axe-core (0 serious or critical
// violations) and the main pages are saved as screenshots.
//
//   node e2e/run.mjs            (from web/, after `npm run build` and a cargo build)
//
// GPUAAS_BIN, GPUAAS_AGENT_BIN: binaries (default ../target/debug/…);
// CHROMIUM_PATH (default /usr/bin/chromium); GPUAAS_SCREENSHOT_DIR (default
// ../docs/screenshots).

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import { startFakeOidc } from "./fake-oidc.mjs";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(web, "..");
const require = createRequire(import.meta.url);
const BIN = process.env.GPUAAS_BIN ?? join(root, "target/debug/gpuaas");
const AGENT_BIN = process.env.GPUAAS_AGENT_BIN ?? join(root, "target/debug/gpuaas-agent");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const SHOTS = process.env.GPUAAS_SCREENSHOT_DIR ?? join(root, "docs/screenshots");
const OUTPUT = join(web, "e2e/output");
const DIST = process.env.GPUAAS_PORTAL_DIST ?? join(web, "dist");
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const ADMIN = { email: "admin@e2e.test", password: "e2e-admin-password-1" };
const USER = { email: "ada@e2e.test", name: "Ada Lovelace", password: "e2e-user-password-1" };
const SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKPvtWANiUEyI5Bec7Kq7kXQjbukv2J9T2+pusBj/hiE ada@laptop";
const SKU = { name: "h100-x8", display: "H100 80GB x8", model: "NVIDIA H100 80GB", gpus: "8", price: "360.00" };
const HOSTNAME = "gpu-node-01.e2e";
const SSO = { clientId: "gpuaas-portal", person: { subject: "grace-0001", email: "grace@sso.e2e.test", name: "Grace Hopper" } };

for (const [what, path] of [
  ["gpuaas binary", BIN],
  ["gpuaas-agent binary", AGENT_BIN],
  ["Chromium", CHROMIUM],
  ["built portal (npm run build)", join(DIST, "index.html")],
]) {
  if (!existsSync(path)) {
    console.error(`e2e: ${what} not found at ${path}`);
    process.exit(2);
  }
}

// ------------------------------------------------------------------ processes

const children = [];
const logs = { platform: [], agent: [] };

function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

function cleanEnv(extra) {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith("GPUAAS_") || name === "DATABASE_URL" || name === "NATS_URL" || name === "RUST_LOG") delete env[name];
  }
  return { ...env, ...extra };
}

function launch(name, command, args, env) {
  const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  const keep = (chunk) => {
    for (const line of chunk.toString().split("\n")) if (line) logs[name].push(line);
    if (logs[name].length > 400) logs[name].splice(0, logs[name].length - 400);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  return child;
}

async function startPlatform(dataDir, oidcIssuer) {
  const port = await freePort();
  const internalPort = await freePort();
  const child = launch(
    "platform",
    BIN,
    ["up", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`, "--internal-listen", `127.0.0.1:${internalPort}`, "--portal-dir", DIST],
    cleanEnv({
      GPUAAS_ADMIN_EMAIL: ADMIN.email,
      GPUAAS_ADMIN_PASSWORD: ADMIN.password,
      GPUAAS_OIDC_ISSUER_URL: oidcIssuer,
      GPUAAS_OIDC_CLIENT_ID: SSO.clientId,
      RUST_LOG: "warn",
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`gpuaas up exited with ${child.exitCode}`);
    try {
      const response = await fetch(`${url}/api/v1/readyz`);
      if (response.ok) return url;
    } catch {
      // not listening yet
    }
    await sleep(200);
  }
  throw new Error("gpuaas up did not become ready in 60 s");
}

function startAgent(url, tokenFile, stateDir) {
  return launch("agent", AGENT_BIN, ["sim", "--count", "1", "--server", url, "--token-file", tokenFile, "--state-dir", stateDir], cleanEnv({}));
}

function stopAll() {
  for (const child of children) if (child.exitCode === null) child.kill("SIGTERM");
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ browser checks

const violations = [];
const pageProblems = [];

/** axe-core on the current page; serious and critical violations fail the run. */
async function checkA11y(page, label) {
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) violations.push({ page: label, ...v });
  const minor = result.length - bad.length;
  console.log(`    axe ${label}: ${bad.length} serious/critical${minor ? `, ${minor} minor` : ""}`);
}

async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Visits a page and waits for its heading: the page's own content has rendered. */
async function visit(page, path, heading) {
  await page.goto(path);
  await page.getByRole("heading", { level: 1, name: heading }).waitFor();
  await page.locator(".state-loading").first().waitFor({ state: "detached", timeout: 15_000 }).catch(() => {});
}

async function signIn(page, who) {
  await page.goto("/");
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.getByLabel("Email").fill(who.email);
  await page.getByLabel("Password").fill(who.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("navigation", { name: "Main" }).waitFor();
}

async function signOut(page) {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
}

/** Reloads `path` until `check` passes (server-side progress the page polls for too). */
async function eventually(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    await sleep(500);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

// ------------------------------------------------------------------ the run

const steps = [];
async function step(name, body) {
  const started = Date.now();
  process.stdout.write(`  ${name} … `);
  await body();
  steps.push(name);
  console.log(`ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), "gpuaas-portal-e2e-"));
  let browser;
  let page;
  let idp;
  try {
    idp = await startFakeOidc(SSO);
    const url = await startPlatform(join(work, "data"), idp.issuer);
    console.log(`e2e: platform at ${url}`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const context = await browser.newContext({ baseURL: url, viewport: { width: 1280, height: 800 } });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: url });
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    page.on("pageerror", (error) => pageProblems.push(`page error: ${error.message}`));
    page.on("console", (message) => {
      const text = message.text();
      // A CSP violation means the portal does something its own policy forbids.
      if (/Content Security Policy/i.test(text)) pageProblems.push(`CSP: ${text}`);
    });

    await step("the portal is served with the SPA fallback and a strict CSP", async () => {
      const index = await fetch(`${url}/allocations/some-client-route`);
      if (!index.ok || !(await index.text()).includes('<div id="root">')) throw new Error("client route did not fall back to index.html");
      if (!(index.headers.get("content-security-policy") ?? "").includes("script-src 'self'")) throw new Error("no CSP on the portal");
      const api = await fetch(`${url}/api/v1/no-such-endpoint`);
      if (api.status !== 404 || !(await api.json()).error) throw new Error("an unknown /api path must answer the JSON 404");
    });

    await step("sign-in page, wrong password explained", async () => {
      await page.goto("/");
      await page.getByRole("heading", { name: "Sign in" }).waitFor();
      await checkA11y(page, "sign-in");
      await shot(page, "sign-in");
      await page.getByLabel("Email").fill(ADMIN.email);
      await page.getByLabel("Password").fill("not-the-password");
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.getByText("That email and password do not match an account.").waitFor();
    });

    await step("operator signs in; no token in storage or the URL", async () => {
      await signIn(page, ADMIN);
      const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
      if (/eyJ|gpr_|refresh/i.test(stored)) throw new Error(`a token is readable by scripts: ${stored.slice(0, 80)}`);
      if (/token/i.test(page.url())) throw new Error(`token in URL ${page.url()}`);
    });

    await step("a reload keeps the session (silent refresh from the httpOnly cookie)", async () => {
      await page.reload();
      await page.getByRole("navigation", { name: "Main" }).waitFor();
    });

    await step("operator creates a SKU", async () => {
      await visit(page, "/admin/fleet", "Fleet");
      await page.getByRole("button", { name: "Create SKU" }).click();
      const dialog = page.getByRole("dialog");
      await dialog.getByLabel("Name", { exact: true }).fill(SKU.name);
      await dialog.getByLabel("Display name").fill(SKU.display);
      await dialog.getByLabel("GPU model").fill(SKU.model);
      await dialog.getByLabel("GPUs per node").fill(SKU.gpus);
      await dialog.getByLabel("Price per GPU-hour").fill(SKU.price);
      await checkA11y(page, "create-sku-modal");
      await dialog.getByRole("button", { name: "Create", exact: true }).click();
      await dialog.waitFor({ state: "detached" });
    });

    let enrollCommand = "";
    await step("operator registers a node and copies its enrollment command", async () => {
      await page.getByRole("button", { name: "Register node" }).click();
      const dialog = page.getByRole("dialog");
      await dialog.getByLabel("Hostname").fill(HOSTNAME);
      await dialog.getByLabel("SKU").selectOption(SKU.name);
      await dialog.getByRole("button", { name: "Register", exact: true }).click();
      const command = page.getByTestId("enroll-command");
      await command.waitFor();
      enrollCommand = (await command.textContent()) ?? "";
      await checkA11y(page, "enroll-command");
      await shot(page, "fleet-enroll");
      await page.getByRole("button", { name: "Copy enrollment command" }).click();
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      if (copied.trim() !== enrollCommand.trim()) throw new Error(`clipboard holds ${copied}`);
      if (!enrollCommand.includes("gpuaas-agent enroll")) throw new Error(`unexpected command: ${enrollCommand}`);
      await page.keyboard.press("Escape");
    });

    await step("the simulated agent enrolls with that token; the node shows active with its GPUs", async () => {
      const token = enrollCommand.match(/gpe_[A-Za-z0-9_-]+/)?.[0];
      if (!token) throw new Error(`no token in ${enrollCommand}`);
      const tokenFile = join(work, "token");
      writeFileSync(tokenFile, `${token}\n`);
      startAgent(url, tokenFile, join(work, "sim"));
      await eventually("the node to be active", async () => {
        await visit(page, "/admin/fleet", "Fleet");
        const row = page.getByRole("row").filter({ hasText: HOSTNAME });
        return (await row.count()) > 0 && (await row.first().textContent())?.includes("active");
      }, 60_000);
      await page.getByText(/0 of 8 GPUs in use/).first().waitFor();
      await checkA11y(page, "fleet");
      await shot(page, "fleet");
    });

    await step("operator creates a user and credits them", async () => {
      await visit(page, "/admin/users", "Users");
      await page.getByRole("button", { name: "Create user" }).click();
      const dialog = page.getByRole("dialog");
      await dialog.getByLabel("Email").fill(USER.email);
      await dialog.getByLabel("Display name").fill(USER.name);
      await dialog.getByLabel("Password").fill(USER.password);
      await checkA11y(page, "create-user-modal");
      await dialog.getByRole("button", { name: /^Create/ }).click();
      await dialog.waitFor({ state: "detached" });
      await page.getByRole("link", { name: new RegExp(USER.email.replace(".", "\\.")) }).first().click();
      await page.getByRole("heading", { level: 1 }).waitFor();
      await page.getByRole("button", { name: "Credit or adjust balance" }).click();
      const credit = page.getByRole("dialog");
      await credit.getByLabel("Amount").fill("100");
      await credit.getByLabel("Direction").selectOption({ label: "Credit" });
      await credit.getByLabel("Reason").fill("welcome credit");
      await credit.getByRole("button", { name: "Apply adjustment" }).click();
      await credit.waitFor({ state: "detached" });
      await checkA11y(page, "user-detail");
      await shot(page, "operator-user");
    });

    await step("operator pages load: allocations, audit, payments, reconciliation", async () => {
      for (const [path, heading, name] of [
        ["/admin/allocations", "All allocations", "admin-allocations"],
        ["/admin/payments", "Payment sessions", "admin-payments"],
        ["/admin/reconciliation", "Reconciliation", "admin-reconciliation"],
      ]) {
        await visit(page, path, heading);
        await checkA11y(page, name);
      }
      await signOut(page);
    });

    await step("user signs in; operator pages are forbidden to them", async () => {
      await signIn(page, USER);
      await page.goto("/admin/users");
      await page.getByText("You do not have access to this").waitFor();
      await checkA11y(page, "forbidden");
      await page.goto("/allocations/01900000-0000-7000-8000-000000000000");
      await page.getByRole("alert").filter({ hasText: /not found/i }).first().waitFor();
      await page.getByTestId("correlation-id").first().waitFor();
      await checkA11y(page, "not-found");
    });

    await step("user adds an SSH key (a private key is refused)", async () => {
      await visit(page, "/ssh-keys", "SSH keys");
      await page.getByLabel("Name").fill("laptop");
      await page.getByLabel("Public key").fill("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----");
      await page.getByRole("button", { name: /Add key/ }).click();
      await page.getByText(/private key/i).first().waitFor();
      await page.getByLabel("Public key").fill(SSH_KEY);
      await page.getByRole("button", { name: /Add key/ }).click();
      await page.getByRole("cell", { name: "laptop" }).waitFor();
      await checkA11y(page, "ssh-keys");
      await shot(page, "ssh-keys");
    });

    await step("capacity shows the SKU with its free GPUs", async () => {
      await visit(page, "/capacity", "Capacity");
      await page.getByText(SKU.display).first().waitFor();
      await checkA11y(page, "capacity");
      await shot(page, "capacity");
    });

    let allocationUrl = "";
    await step("user creates an allocation, seeing the hourly cost first", async () => {
      await visit(page, `/allocations/new?sku=${SKU.name}`, "New allocation");
      await page.getByLabel("GPU count").fill("2");
      await page.getByRole("checkbox", { name: /laptop/ }).check();
      await checkA11y(page, "create-allocation");
      await shot(page, "create-allocation");
      await page.getByRole("button", { name: "Create allocation" }).click();
      const confirm = page.getByRole("dialog");
      await confirm.getByText(/720\.00/).first().waitFor();
      await checkA11y(page, "create-allocation-confirm");
      await confirm.getByRole("button", { name: "Confirm and create" }).click();
      await page.waitForURL(/\/allocations\/[0-9a-f-]{36}$/);
      allocationUrl = new URL(page.url()).pathname;
    });

    await step("the allocation becomes active on its own (live timeline), the SSH command is copied", async () => {
      await page.getByTestId("allocation-status").filter({ hasText: "active" }).waitFor({ timeout: 60_000 });
      const command = ((await page.getByTestId("ssh-command").textContent()) ?? "").trim();
      if (!command.startsWith("ssh ")) throw new Error(`unexpected SSH command ${command}`);
      await page.getByRole("button", { name: "Copy SSH command" }).click();
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      if (copied.trim() !== command) throw new Error(`clipboard holds ${copied}`);
      await checkA11y(page, "allocation-active");
      await shot(page, "allocation-detail");
    });

    await step("the dashboard shows the burn rate and the running allocation", async () => {
      await visit(page, "/", "Dashboard");
      await page.getByText(/720\.00/).first().waitFor();
      await checkA11y(page, "dashboard");
      await shot(page, "dashboard");
      await visit(page, "/allocations", "Allocations");
      await checkA11y(page, "allocations");
      await shot(page, "allocations");
    });

    await step("keyboard only: skip link first, the release dialog traps focus and gives it back", async () => {
      await page.goto(allocationUrl);
      await page.getByTestId("allocation-status").waitFor();
      await page.keyboard.press("Tab");
      const first = await page.evaluate(() => document.activeElement?.textContent?.trim());
      if (first !== "Skip to content") throw new Error(`first Tab lands on ${first}`);
      const release = page.getByRole("button", { name: "Release", exact: true });
      await release.focus();
      await page.keyboard.press("Enter");
      const dialog = page.getByRole("dialog");
      await dialog.waitFor();
      for (let i = 0; i < 6; i += 1) {
        await page.keyboard.press("Tab");
        const inside = await page.evaluate(() => Boolean(document.activeElement?.closest("dialog")));
        if (!inside) throw new Error("focus left the open dialog");
      }
      await page.keyboard.press("Escape");
      await dialog.waitFor({ state: "detached" });
      const back = await page.evaluate(() => document.activeElement?.textContent?.trim());
      if (back !== "Release") throw new Error(`focus returned to ${back}, not the Release button`);
    });

    await step("user releases it with confirmation; it reaches released", async () => {
      await page.getByRole("button", { name: "Release", exact: true }).click();
      const confirm = page.getByRole("dialog");
      await checkA11y(page, "release-confirm");
      await confirm.getByRole("button", { name: "Release allocation" }).click();
      await page.getByTestId("allocation-status").filter({ hasText: /^released$/ }).waitFor({ timeout: 60_000 });
    });

    await step("billing shows the usage charge and the ledger", async () => {
      await visit(page, "/billing", "Billing");
      await page.getByRole("heading", { name: "Usage" }).waitFor();
      await page.getByRole("heading", { name: "Ledger" }).waitFor();
      await eventually("a usage debit in the ledger", async () => {
        await visit(page, "/billing", "Billing");
        return (await page.locator(`[data-entry-type="usage_debit"]`).count()) > 0;
      });
      const balance = (await page.getByTestId("balance").textContent()) ?? "";
      if (balance.includes("100.00")) throw new Error(`balance ${balance} shows no charge`);
      await checkA11y(page, "billing");
      await shot(page, "billing");
      await signOut(page);
    });

    await step("operator reads the audit trail", async () => {
      await signIn(page, ADMIN);
      await visit(page, "/admin/audit", "Audit log");
      await page.getByRole("cell", { name: /allocation|user|balance/i }).first().waitFor();
      await checkA11y(page, "audit");
      await shot(page, "audit-log");
    });

    await step("single sign-on: redirect to the provider, PKCE, back to /auth/callback, signed in", async () => {
      await signOut(page);
      await page.getByRole("link", { name: "Sign in with single sign-on" }).click();
      await page.getByRole("navigation", { name: "Main" }).waitFor();
      await page.getByText(SSO.person.name).first().waitFor();
      const address = new URL(page.url());
      if (address.search.includes("code=") || address.pathname === "/auth/callback") {
        throw new Error(`the authorization code stayed in the address bar: ${page.url()}`);
      }
      if (idp.seen.pkceChecked !== 1) throw new Error(`provider saw ${JSON.stringify(idp.seen)}`);
      await checkA11y(page, "sso-dashboard");
    });

    if (pageProblems.length > 0) throw new Error(`the page reported problems:\n  ${pageProblems.join("\n  ")}`);
    if (violations.length > 0) {
      throw new Error(
        `axe-core found ${violations.length} serious or critical violations:\n${violations
          .map((v) => `  [${v.page}] ${v.impact} ${v.id}: ${v.help} at ${v.nodes.join(", ")}`)
          .join("\n")}`,
      );
    }
    console.log(`e2e: ${steps.length} steps passed; screenshots in ${SHOTS}`);
  } catch (error) {
    console.log("FAILED");
    console.error(`e2e: ${error.stack ?? error}`);
    if (page) {
      mkdirSync(OUTPUT, { recursive: true });
      await page.screenshot({ path: join(OUTPUT, "failure.png"), fullPage: true }).catch(() => {});
      console.error(`e2e: page at failure ${page.url()} (screenshot e2e/output/failure.png)`);
      const text = await page.locator("main").innerText().catch(() => "");
      console.error(`e2e: main text:\n${text.slice(0, 1500)}`);
    }
    for (const problem of pageProblems) console.error(`e2e: ${problem}`);
    console.error(`e2e: platform log tail:\n${logs.platform.slice(-40).join("\n")}`);
    console.error(`e2e: agent log tail:\n${logs.agent.slice(-20).join("\n")}`);
    process.exitCode = 1;
  } finally {
    await browser?.close().catch(() => {});
    stopAll();
    await idp?.close().catch(() => {});
    await sleep(300);
    rmSync(work, { recursive: true, force: true });
  }
}

process.on("SIGINT", () => {
  stopAll();
  process.exit(130);
});
await main();
