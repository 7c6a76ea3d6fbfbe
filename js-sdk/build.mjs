// Builds the SDK into ../static/sdk (or the directory given as the first argument): ESM
// (keybroker.mjs), IIFE with global `Keybroker` (keybroker.js) and type declarations
// (keybroker.d.ts). The broker serves them at /sdk/. static/sdk is committed, so that the
// wheel and the sdist carry it and installing needs no Node.js; scripts/test builds into a
// temporary directory and fails if the committed files differ.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";

const outdir = resolve(process.argv[2] ?? new URL("../static/sdk/", import.meta.url).pathname) + "/";
mkdirSync(outdir, { recursive: true });
const common = { entryPoints: ["src/keybroker.ts"], bundle: true, target: "es2020", legalComments: "none" };
await build({ ...common, format: "esm", outfile: `${outdir}keybroker.mjs` });
await build({ ...common, format: "iife", globalName: "Keybroker", outfile: `${outdir}keybroker.js` });
execFileSync(
  process.execPath,
  ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json", "--outDir", outdir],
  { stdio: "inherit" },
);
console.log(`built ${outdir}keybroker.{mjs,js,d.ts}`);
