// TodoClient against the real server binary: keys and replays, typed errors that are never
// retried, the status-details decoder, and the caller's deadline and cancellation.

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, test } from "node:test";

import {
  Code,
  InvalidArgumentError,
  KeyReusedError,
  OutcomeUnknownError,
  RejectedError,
  TodoClient,
  decodeStatusDetails,
  statusDetailsOf,
} from "../src/index.js";
import { startServer } from "./server.js";
import type { Server } from "./server.js";

let server: Server;
let client: TodoClient;

before(async () => {
  server = await startServer();
  client = new TodoClient({ baseUrl: `http://${server.addr}` });
});

after(async () => {
  await server.stop();
});

async function allTitles(): Promise<string[]> {
  const titles: string[] = [];
  for await (const todo of client.allTodos()) titles.push(todo.title);
  return titles;
}

test("each logical write gets its own UUIDv7 key; a retry with the key is a replay", async () => {
  const first = await client.createTodo({ title: "node one" });
  const second = await client.createTodo({ title: "node one" });
  assert.equal(first.replayed, false);
  assert.notEqual(first.idempotencyKey, second.idempotencyKey);
  assert.match(first.idempotencyKey, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(first.attempts.count, 1);

  const again = await client.createTodo({ title: "node one" }, { idempotencyKey: first.idempotencyKey });
  assert.equal(again.replayed, true);
  assert.equal(again.value.id, first.value.id);
  assert.equal((await allTitles()).filter((t) => t === "node one").length, 2);

  const updated = await client.updateTodo({ id: first.value.id, completed: true }, ["completed"]);
  assert.equal(updated.value.completed, true);
  assert.equal(updated.value.title, "node one");
  assert.equal((await client.getTodo(first.value.id)).etag, updated.value.etag);
  await client.deleteTodo(first.value.id);
  await client.deleteTodo(first.value.id); // idempotent
  await assert.rejects(client.getTodo(first.value.id), (err) => err instanceof RejectedError && err.code === Code.NotFound);
});

test("a key reused for another request is a typed KeyReusedError, not retried", async () => {
  const first = await client.createTodo({ title: "reuse" });
  const err = await client.createTodo({ title: "another" }, { idempotencyKey: first.idempotencyKey }).then(
    () => assert.fail("one key, two requests"),
    (err: unknown) => err,
  );
  assert.ok(err instanceof KeyReusedError, String(err));
  assert.equal(err.idempotencyKey, first.idempotencyKey);
  assert.equal(err.code, Code.FailedPrecondition);
  assert.equal(err.attempts.count, 1);
  const details = statusDetailsOf(err.cause);
  assert.equal(details.errorInfo?.reason, "IDEMPOTENCY_KEY_REUSED");
  assert.equal(details.errorInfo?.domain, "todo.v1.TodoService");
});

test("invalid input names the field, decoded from grpc-status-details-bin", async () => {
  const err = await client.createTodo({ title: "" }).then(
    () => assert.fail("an empty title is refused"),
    (err: unknown) => err,
  );
  assert.ok(err instanceof InvalidArgumentError, String(err));
  assert.equal(err.attempts.count, 1);
  assert.deepEqual(err.violations.map((v) => v.field), ["todo.title"]);
  // The raw trailer, through the decoder.
  const raw = err.cause.metadata.get("grpc-status-details-bin");
  assert.ok(raw, "the trailer reaches the client");
  const details = decodeStatusDetails(raw);
  assert.equal(details.code, Code.InvalidArgument);
  assert.equal(details.badRequest?.fieldViolations[0]?.field, "todo.title");
});

test("a stale etag is ABORTED from the server and not retried", async () => {
  const created = await client.createTodo({ title: "etag" });
  await client.updateTodo({ ...created.value, title: "changed" });
  const err = await client.updateTodo({ ...created.value, title: "stale" }).then(
    () => assert.fail("stale etag"),
    (err: unknown) => err,
  );
  assert.ok(err instanceof RejectedError, String(err));
  assert.equal(err.code, Code.Aborted);
  assert.equal(err.attempts.count, 1);
});

async function unusedPort(): Promise<number> {
  return new Promise((resolve) => {
    const listener = createServer().listen(0, "127.0.0.1", () => {
      const address = listener.address();
      listener.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

test("an unreachable server is retried until the caller's deadline, then OutcomeUnknownError", async () => {
  const nobody = new TodoClient({ baseUrl: `http://127.0.0.1:${await unusedPort()}` });
  const started = Date.now();
  const err = await nobody.createTodo({ title: "nobody" }, { deadline: started + 800 }).then(
    () => assert.fail("no server"),
    (err: unknown) => err,
  );
  const elapsed = Date.now() - started;
  assert.ok(err instanceof OutcomeUnknownError, String(err));
  assert.ok(err.attempts.count >= 3, JSON.stringify(err.attempts));
  assert.ok(err.idempotencyKey, "the key to retry with later");
  assert.equal(err.code, Code.Unavailable);
  assert.ok(elapsed <= 1000, `the deadline holds: ${elapsed} ms`);
});

test("the caller's abort signal stops the retries", async () => {
  const nobody = new TodoClient({ baseUrl: `http://127.0.0.1:${await unusedPort()}` });
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 300);
  const started = Date.now();
  const err = await nobody.createTodo({ title: "aborted" }, { signal: controller.signal }).then(
    () => assert.fail("no server"),
    (err: unknown) => err,
  );
  assert.ok(err instanceof OutcomeUnknownError, String(err));
  assert.equal(err.abortedByCaller, true);
  assert.equal(err.code, Code.Canceled);
  assert.ok(err.idempotencyKey, "the key to retry with later");
  assert.ok(Date.now() - started < 1000, "stopped at the abort, not at the 30 s budget");
});

test("completeTodos completes every id in order, all or none, and replays with its key", async () => {
  const client = new TodoClient({ baseUrl: `http://${server.addr}` });
  const a = (await client.createTodo({ title: "a" })).value;
  const b = (await client.createTodo({ title: "b" })).value;
  const done = await client.completeTodos([b.id, a.id]);
  assert.deepEqual(done.value.map((todo) => todo.id), [b.id, a.id]);
  assert.ok(done.value.every((todo) => todo.completed));
  assert.equal(done.replayed, false);
  const again = await client.completeTodos([b.id, a.id], { idempotencyKey: done.idempotencyKey });
  assert.equal(again.replayed, true);
  await assert.rejects(client.completeTodos([a.id, "01890a5d-ac96-774b-bcce-b302099a8057"]), (err: unknown) => {
    assert.ok(err instanceof RejectedError);
    assert.equal(err.code, Code.NotFound);
    return true;
  });
});

test("a tokenProvider is asked for the current token before every call", async () => {
  const { createHash } = await import("node:crypto");
  const { mkdtempSync, writeFileSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const tokens: Record<string, string> = { alice: "alice-secret-1", bob: "bob-secret-2" };
  const file = join(mkdtempSync(join(tmpdir(), "todo-tokens-")), "tokens");
  writeFileSync(
    file,
    Object.entries(tokens)
      .map(([caller, token]) => `${caller} ${createHash("sha256").update(token).digest("hex")}\n`)
      .join(""),
  );
  const guarded = await startServer("--tokens-file", file);
  try {
    assert.throws(() => new TodoClient({ baseUrl: "http://x", token: "a", tokenProvider: () => "b" }), TypeError);
    let current = tokens.alice;
    const client = new TodoClient({ baseUrl: `http://${guarded.addr}`, tokenProvider: async () => current });
    const alices = (await client.createTodo({ title: "alice's" })).value;
    current = tokens.bob; // the credential rotates under the running client
    await assert.rejects(client.getTodo(alices.id), (err: unknown) => {
      assert.ok(err instanceof RejectedError);
      assert.equal(err.code, Code.NotFound);
      return true;
    });
    current = "revoked";
    await assert.rejects(client.createTodo({ title: "nobody's" }), (err: unknown) => {
      assert.ok(err instanceof RejectedError);
      assert.equal(err.code, Code.Unauthenticated);
      return true;
    });
  } finally {
    await guarded.stop();
  }
});
