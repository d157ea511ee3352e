// Writes the HTML template that `dvc plots show` and `dvc plots diff` fill (.dvc/config names
// it: plots.html_template), with Vega, Vega-Lite and vega-embed inlined from node_modules. DVC's
// own page loads them from a CDN, so without a network it renders nothing. The template has no
// {scripts} placeholder: DVC's CDN <script> tags then have nowhere to go.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = resolve(here, process.argv[2] ?? "../../.dvc/plots/offline.html");
const bundles = ["vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js"];

// A bundle's text may hold "</script", which would end the inline element early.
const inline = (name) =>
  `<script>/* ${name} */\n${readFileSync(resolve(here, "node_modules", name), "utf8").replaceAll("</script", "<\\/script")}\n</script>`;

const page = `<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  {refresh_tag}
  <title>DVC plots</title>
  ${bundles.map(inline).join("\n  ")}
  <style>table { border-spacing: 15px; }</style>
</head>
<body>
  {plot_divs}
</body>
</html>
`;
for (const placeholder of ["{plot_divs}", "{scripts}"]) {
  const count = page.split(placeholder).length - 1;
  const expected = placeholder === "{plot_divs}" ? 1 : 0;
  if (count !== expected) throw new Error(`${placeholder} appears ${count} times, not ${expected}`);
}
mkdirSync(dirname(target), { recursive: true });
writeFileSync(target, page);
console.log(`offline plots template -> ${target} (${Math.round(page.length / 1024)} KiB)`);
