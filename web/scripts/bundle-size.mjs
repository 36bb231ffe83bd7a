// Reports the first-load size of the built portal (gzipped JS + CSS that index.html
// pulls in, plus the chunks they import statically) and fails above the budget.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join } from "node:path";

const BUDGET_BYTES = 250 * 1024;
const dist = new URL("../dist/", import.meta.url).pathname;
const html = readFileSync(join(dist, "index.html"), "utf8");

const seen = new Set();
const queue = [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
while (queue.length > 0) {
  const file = queue.shift();
  if (seen.has(file)) continue;
  seen.add(file);
  if (!file.endsWith(".js")) continue;
  const source = readFileSync(join(dist, file), "utf8");
  // Static imports only: dynamic import() chunks load later, on demand.
  for (const m of source.matchAll(/(?:^|[;\n}])\s*import\s*(?:[^"'()]*?from\s*)?["']\.\/([^"']+\.js)["']/g)) {
    queue.push(`assets/${m[1]}`);
  }
}

let firstLoad = 0;
for (const file of seen) firstLoad += gzipSync(readFileSync(join(dist, file)), { level: 9 }).length;
let all = 0;
for (const file of readdirSync(join(dist, "assets"))) {
  if (/\.(js|css)$/.test(file)) all += gzipSync(readFileSync(join(dist, "assets", file)), { level: 9 }).length;
}
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
console.log(`portal first load (gzip, JS + CSS): ${kb(firstLoad)} over ${seen.size} files; budget ${kb(BUDGET_BYTES)}`);
console.log(`portal all assets (gzip): ${kb(all)}; dist/assets holds ${readdirSync(join(dist, "assets")).length} files, ${kb(statSync(join(dist, "index.html")).size)} index.html`);
if (firstLoad > BUDGET_BYTES) {
  console.error(`portal first load ${kb(firstLoad)} is over the ${kb(BUDGET_BYTES)} budget`);
  process.exit(1);
}
