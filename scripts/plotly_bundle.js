// Builds web/static/vendor/plotly-explorer.min.js: Plotly.js with only the trace types the explorer
// draws (scatter, scattergl, heatmap), 1.5 MB instead of the full bundle's 4.8 MB, so that the page
// parses and compiles a third of the code before the map can be drawn (bench/web.py measures both).
//
// Needs node and the plotly.js npm package of the version the python plotly package ships (4.1.1 with
// plotly 7.1), unpacked with its dependencies and Plotly's own build plugins:
//
//   curl -sSLO https://registry.npmjs.org/plotly.js/-/plotly.js-4.1.1.tgz && tar xzf plotly.js-4.1.1.tgz
//   cd package && npm install --omit=dev --ignore-scripts
//   npm install --no-save --ignore-scripts esbuild@0.28.1 esbuild-plugin-environment@0.5.0 \
//     esbuild-plugin-glsl@1.4.2 esbuild-plugin-inline-css@0.0.1 stream-browserify@3.0.0
//   node /path/to/latentlab/scripts/plotly_bundle.js "$PWD" /path/to/latentlab/web/static/vendor/plotly-explorer.min.js
//
// The options are Plotly's own (esbuild-config.js in that package), with minification on and the
// licence comments of every bundled module kept at the end of the file.
"use strict";

const path = require("path");

const [pkg, out] = process.argv.slice(2);
if (!pkg || !out) {
  console.error("usage: node scripts/plotly_bundle.js PLOTLY_JS_PACKAGE_DIR OUTPUT_FILE");
  process.exit(2);
}
const need = (name) => require(require.resolve(name, { paths: [pkg] }));
const esbuild = need("esbuild");
const { environmentPlugin } = need("esbuild-plugin-environment");
const { glsl } = need("esbuild-plugin-glsl");
const InlineCSSPlugin = need("esbuild-plugin-inline-css");
const version = need(path.join(pkg, "package.json")).version;

const TRACES = ["scattergl", "heatmap"]; // scatter is in Plotly's core
const entry = [
  "'use strict';",
  "var Plotly = require('./lib/core');",
  `Plotly.register([${TRACES.map((t) => `require('./lib/${t}')`).join(", ")}]);`,
  "module.exports = Plotly;",
].join("\n");

esbuild
  .build({
    absWorkingDir: path.resolve(pkg),
    stdin: { contents: entry, resolveDir: path.resolve(pkg), sourcefile: "index-latentlab.js" },
    format: "iife",
    globalName: "Plotly",
    bundle: true,
    minify: true,
    sourcemap: false,
    legalComments: "eof",
    plugins: [InlineCSSPlugin(), glsl({ minify: true }), environmentPlugin({ NODE_DEBUG: false })],
    alias: { regl: "@plotly/regl", stream: "stream-browserify" },
    define: { global: "window", "define.amd": "false" },
    target: "es2016",
    outfile: path.resolve(out),
    banner: {
      js: `/**\n* plotly.js v${version}, traces: scatter, ${TRACES.join(", ")} (built by latentlab's scripts/plotly_bundle.js)\n* Copyright 2012-2026, Plotly, Inc.\n* All rights reserved.\n* Licensed under the MIT license (plotly-LICENSE.txt)\n*/`,
    },
    logLevel: "info",
  })
  .catch(() => process.exit(1));
