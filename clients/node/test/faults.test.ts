// The shared fault scenarios (`todo-faults`) with this client: with retries, 0 errors reach
// the application and every logical write leaves exactly one row; with retries off (the
// control), the same fault surfaces errors.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { binary } from "./server.js";

const workload = join(dirname(fileURLToPath(import.meta.url)), "workload.js");

for (const scenario of ["cut-after-headers", "cut-before-headers", "postgres-outage", "server-restart"]) {
  for (const retries of ["on", "off"]) {
    test(`${scenario} with retries ${retries}`, () => {
      const args = ["--scenario", scenario, "--retries", retries, "--client-cmd", `${process.execPath} ${workload}`];
      if (process.env.TODO_SERVER_BIN) args.push("--server-bin", process.env.TODO_SERVER_BIN);
      const run = spawnSync(binary("TODO_FAULTS_BIN", "todo-faults"), args, { encoding: "utf8", timeout: 300_000 });
      const lines = (run.stdout ?? "").trim().split("\n");
      const report = JSON.parse(lines[lines.length - 1] || "{}");
      console.log(JSON.stringify(report));
      assert.equal(run.status, 0, `${JSON.stringify(report)} ${run.stderr}`);
      if (retries === "on") {
        assert.equal(report.errors, 0);
        assert.equal(report.missing, 0);
        assert.equal(report.duplicated, 0);
        assert.equal(report.rows, report.writes);
      } else {
        assert.ok(report.errors > 0, "the fault bites without retries");
      }
    });
  }
}
