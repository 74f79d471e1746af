// Prints the size of the browser build: dist/ as shipped, one minified bundle of the
// browser entry (esbuild), and that bundle gzipped.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const dist = "dist";
const js = readdirSync(dist).filter((f) => f.endsWith(".js"));
const raw = js.reduce((n, f) => n + statSync(join(dist, f)).size, 0);
const out = await build({ entryPoints: [join(dist, "index.js")], bundle: true, minify: true, format: "esm", platform: "browser", write: false });
const min = out.outputFiles[0].contents;
const gz = gzipSync(min, { level: 9 });
console.log(`dist/*.js (unminified, ${js.length} files): ${raw} bytes`);
console.log(`browser bundle, minified: ${min.length} bytes`);
console.log(`browser bundle, minified + gzip: ${gz.length} bytes`);
