// Builds the SDK into ../static/sdk: ESM (keybroker.mjs), IIFE with global `Keybroker`
// (keybroker.js) and type declarations (keybroker.d.ts). The broker serves them at /sdk/.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { mkdirSync, renameSync } from "node:fs";

const outdir = new URL("../static/sdk/", import.meta.url).pathname;
mkdirSync(outdir, { recursive: true });
const common = { entryPoints: ["src/keybroker.ts"], bundle: true, target: "es2020", legalComments: "none" };
await build({ ...common, format: "esm", outfile: `${outdir}keybroker.mjs` });
await build({ ...common, format: "iife", globalName: "Keybroker", outfile: `${outdir}keybroker.js` });
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], { stdio: "inherit" });
console.log(`built ${outdir}keybroker.{mjs,js,d.ts}`);
