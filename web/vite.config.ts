import { defineConfig } from "vitest/config";

// No React plugin: esbuild compiles JSX with the automatic runtime, which is all a
// production build needs (the plugin only adds fast refresh for development).
export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: {
    target: "es2022",
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 400,
    rollupOptions: {
      // "use client" marks server-component boundaries; meaningless in a SPA bundle.
      onwarn(warning, warn) {
        if (warning.code === "MODULE_LEVEL_DIRECTIVE") return;
        warn(warning);
      },
    },
  },
  server: {
    // `npm run dev` proxies the API to a running `gpuaas up`.
    proxy: { "/api": "http://127.0.0.1:8080" },
  },
  test: {
    include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
    environment: "node",
  },
});
