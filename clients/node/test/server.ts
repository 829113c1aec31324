// The real todo-server binary on a free port, on a SQLite file of its own.

import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root (this file runs from clients/node/dist/test). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export function binary(variable: string, name: string): string {
  return process.env[variable] ?? join(REPO, "target", "debug", name);
}

export interface Server {
  addr: string;
  stop(): Promise<void>;
}

export async function startServer(...extra: string[]): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), "todo-node-"));
  const child: ChildProcess = spawn(
    binary("TODO_SERVER_BIN", "todo-server"),
    [
      "--listen-addr", "127.0.0.1:0",
      "--metrics-enabled", "false",
      "--database-url", `sqlite:${join(dir, "todo.db")}`,
      "--log-format", "json",
      "--shutdown-drain", "0s",
      ...extra,
    ],
    { env: { ...process.env, DATABASE_URL: "", RUST_LOG: "warn,todo_service::startup=info" }, stdio: ["ignore", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: child.stdout! });
  const addr = await new Promise<string>((resolveAddr, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start in 30 s")), 30_000);
    child.on("exit", (code) => reject(new Error(`the server exited during start-up (${code})`)));
    lines.on("line", (line) => {
      try {
        const json = JSON.parse(line);
        if (json.message === "serving gRPC") {
          clearTimeout(timer);
          resolveAddr(json.addr);
        }
      } catch {
        // not JSON: ignore
      }
    });
  });
  return {
    addr,
    stop: async () => {
      const exited = new Promise((done) => child.once("exit", done));
      child.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
