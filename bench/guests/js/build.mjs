// Builds the JavaScript hello with componentize-js: `node build.mjs OUT WIT`.
import { componentize } from "@bytecodealliance/componentize-js";
import { readFile, writeFile } from "node:fs/promises";
const [out, wit] = process.argv.slice(2);
const source = await readFile(new URL("app.js", import.meta.url), "utf8");
const { component } = await componentize(source, { witPath: wit, worldName: "local:hello/hello" });
await writeFile(out, component);
