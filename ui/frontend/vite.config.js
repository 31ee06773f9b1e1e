// Bundles vue-flow + dagre as one ES module for NiceGUI's import map.
// `vue` stays external: the browser resolves it to NiceGUI's own Vue 3 (its import map maps "vue"),
// so the canvas shares NiceGUI's Vue instance instead of shipping a second copy.
import { defineConfig } from "vite";

export default defineConfig({
  build: {
    lib: {
      entry: "./src/index.mjs",
      formats: ["es"],
      fileName: () => "index.js",
      cssFileName: "style",
    },
    outDir: "../static/dist",
    emptyOutDir: true,
    target: "es2020",
    rollupOptions: { external: ["vue"] },
  },
  define: { "process.env.NODE_ENV": JSON.stringify("production") },
});
