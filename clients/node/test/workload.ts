// The shared fault scenario's workload (see `todo-faults --help`): TODO_WRITES logical creates
// titled `${TODO_PREFIX}-${i}`, TODO_CONCURRENCY at a time, through TodoClient; prints the
// report as the last line of stdout. TODO_RETRIES=off: one attempt per call (the control).

import { setTimeout as sleep } from "node:timers/promises";

import { Code, NO_RETRIES, TodoCallError, TodoClient } from "../src/index.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const writes = Number(env("TODO_WRITES"));
const concurrency = Number(env("TODO_CONCURRENCY"));
const pauseMs = Number(env("TODO_PAUSE_MS"));
const prefix = env("TODO_PREFIX");
const retries = (process.env.TODO_RETRIES ?? "on") === "on";

const client = new TodoClient({
  baseUrl: `http://${env("TODO_TARGET")}`,
  retryPolicy: retries ? {} : NO_RETRIES,
});
const report = { ok: 0, errors: 0, codes: {} as Record<string, number> };
let next = 0;

async function worker(): Promise<void> {
  for (let i = next++; i < writes; i = next++) {
    try {
      await client.createTodo({ title: `${prefix}-${i}` });
      report.ok += 1;
    } catch (err) {
      if (!(err instanceof TodoCallError)) throw err;
      report.errors += 1;
      const name = Code[err.code] ?? String(err.code);
      report.codes[name] = (report.codes[name] ?? 0) + 1;
    }
    await sleep(pauseMs);
  }
}

await Promise.all(Array.from({ length: concurrency }, worker));
console.log(JSON.stringify(report));
process.exit(0);
