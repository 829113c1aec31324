// `npm test`: the tests run against the package as a user installs it. `npm pack` (whose
// prepack generates the code and compiles src/ and test/) makes the tarball; it is installed
// into a fresh directory; the compiled tests are copied there with their imports of
// `../src/index.js` pointed at the installed `@todo-service/client`; and node --test runs them
// there. The server binaries come from TODO_SERVER_BIN / TODO_FAULTS_BIN, else the workspace's
// debug build.

import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(packageDir, "../..");
const name = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8")).name;
const env = {
  ...process.env,
  TODO_SERVER_BIN: process.env.TODO_SERVER_BIN ?? join(repo, "target", "debug", "todo-server"),
  TODO_FAULTS_BIN: process.env.TODO_FAULTS_BIN ?? join(repo, "target", "debug", "todo-faults"),
};

const fresh = mkdtempSync(join(tmpdir(), "todo-client-installed-"));
const npm = (args, cwd) => execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
const tarball = npm(["pack", "--silent", "--pack-destination", fresh], packageDir).trim().split("\n").pop();
writeFileSync(join(fresh, "package.json"), JSON.stringify({ name: "installed-client-test", private: true, type: "module" }));
npm(["install", "--no-audit", "--no-fund", "--loglevel=error", join(fresh, tarball)], fresh);

const compiled = join(packageDir, "dist", "test");
const tests = join(fresh, "test");
mkdirSync(tests);
for (const file of readdirSync(compiled).filter((f) => f.endsWith(".js"))) {
  const text = readFileSync(join(compiled, file), "utf8").replaceAll('"../src/index.js"', JSON.stringify(name));
  if (text.includes("../src/")) throw new Error(`${file} still imports the source tree`);
  writeFileSync(join(tests, file), text);
}
const files = readdirSync(tests).filter((f) => f.endsWith(".test.js")).map((f) => join("test", f));
console.log(`# testing ${tarball} installed in ${fresh}`);
const run = spawnSync(process.execPath, ["--test", "--test-concurrency=1", ...files], { cwd: fresh, env, stdio: "inherit" });
rmSync(fresh, { recursive: true, force: true });
process.exit(run.status ?? 1);
