// Bundles JsSIP (npm, version pinned in package.json + package-lock.json) into one browser
// script for the agent panel, as JsSIP's own "build" does (IIFE, global JsSIP, ES2015), and
// writes the licences of everything bundled beside it. Run by `./dev.sh vendor-js`.
import esbuild from "esbuild";
import fs from "node:fs";
import path from "node:path";

const out = process.argv[2];
const bundled = ["jssip", "debug", "ms", "events", "sdp-transform"];
const version = (name) => JSON.parse(fs.readFileSync(`node_modules/${name}/package.json`)).version;

await esbuild.build({
  entryPoints: ["node_modules/jssip/lib/JsSIP.js"], outfile: path.join(out, "jssip.min.js"),
  bundle: true, minify: true, sourcemap: false, format: "iife", globalName: "JsSIP",
  platform: "browser", target: ["es2015"], supported: { "template-literal": false },
  legalComments: "inline",
  banner: { js: `/* JsSIP ${version("jssip")} (MIT) bundled with ${bundled.slice(1).map((n) => `${n} ${version(n)}`).join(", ")}: licences in jssip.LICENSE.txt */` },
});

let licences = "";
for (const name of bundled) {
  const file = fs.readdirSync(`node_modules/${name}`).find((f) => /^licen[cs]e/i.test(f));
  licences += `==== ${name} ${version(name)} (npm) ====\n\n` +
    fs.readFileSync(`node_modules/${name}/${file}`, "utf8").trim() + "\n\n";
}
fs.writeFileSync(path.join(out, "jssip.LICENSE.txt"), licences);
