// Enforces the portal's layering (shared ← platform ← products; shell wires them):
// src/shared must not import platform, products or shell; src/platform must not
// import products or shell; a product must not import another product.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const src = new URL("../src/", import.meta.url).pathname;
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (/\.(ts|tsx)$/.test(name) && !name.endsWith(".d.ts")) files.push(path);
  }
})(src);

function layer(path) {
  const parts = relative(src, path).split("/");
  if (parts[0] === "products") return { layer: "products", product: parts[1] };
  return { layer: parts[0] };
}

const forbidden = { shared: ["platform", "products", "shell"], platform: ["products", "shell"], products: ["shell"] };
const problems = [];
for (const file of files) {
  const from = layer(file);
  const text = readFileSync(file, "utf8");
  for (const m of text.matchAll(/(?:import|export)[^"']*?from\s*["'](\.[^"']+)["']|import\(\s*["'](\.[^"']+)["']\s*\)/g)) {
    const target = layer(resolve(dirname(file), m[1] ?? m[2]));
    const bad =
      (forbidden[from.layer] ?? []).includes(target.layer) ||
      (from.layer === "products" && target.layer === "products" && from.product !== target.product);
    if (bad) problems.push(`${relative(src, file)} imports ${m[1] ?? m[2]} (${from.layer} must not depend on ${target.layer}${target.product ? `/${target.product}` : ""})`);
  }
}
if (problems.length > 0) {
  console.error(`layering violations:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(`imports respect the layering (${files.length} files)`);
