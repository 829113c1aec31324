// A TodoService client whose writes are safe to retry, over the Connect-ES client generated
// from proto/todo/v1/todo.proto (speaking the gRPC protocol over HTTP/2).
//
// - Each logical CreateTodo / UpdateTodo gets a fresh UUIDv7 `idempotency-key` that every
//   attempt carries; the service performs the write once and replays the stored answer to the
//   other attempts (`Written.replayed`).
// - A failure whose outcome is unknown is retried with exponential backoff and jitter inside
//   the call's budget and the caller's deadline: UNAVAILABLE, DEADLINE_EXCEEDED of one attempt,
//   CANCELED that the caller did not cause (Connect-ES reports a dropped connection so), and
//   INTERNAL/UNKNOWN raised by the connection rather than sent by the server.
// - Answers a retry cannot change are thrown at once, typed: KeyReusedError,
//   InvalidArgumentError (fields named), RejectedError. OutcomeUnknownError carries the key to
//   retry a write with later.

import { setTimeout as sleep } from "node:timers/promises";

import { fromBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import type { FieldMask } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { CallOptions, Client, Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { BadRequest, ErrorInfo } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import { ListTodosRequestSchema, TodoSchema, TodoService } from "./gen/todo/v1/todo_pb.js";
import type { ListTodosResponse, Todo } from "./gen/todo/v1/todo_pb.js";

export { Code } from "@connectrpc/connect";
export type { Todo, ListTodosResponse } from "./gen/todo/v1/todo_pb.js";

const REPLAYED_HEADER = "idempotent-replayed";
const STATUS_DETAILS_HEADER = "grpc-status-details-bin";
export const KEY_REUSED_REASON = "IDEMPOTENCY_KEY_REUSED";

/** How long and how often one logical call is tried. */
export interface RetryPolicy {
  /** Milliseconds one logical call may take, every attempt and pause included. */
  budgetMs: number;
  /** Milliseconds one attempt may take (sent as its gRPC deadline). */
  attemptTimeoutMs: number;
  /** The pause before the first retry; it grows `multiplier` times per retry up to
   * `maxBackoffMs`, and each pause is drawn uniformly from [half, all] of it. */
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** At most this many attempts per logical call (1: no retries). */
  maxAttempts: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  budgetMs: 30_000,
  attemptTimeoutMs: 10_000,
  initialBackoffMs: 50,
  maxBackoffMs: 2_000,
  multiplier: 2,
  maxAttempts: Number.MAX_SAFE_INTEGER,
};

/** One attempt per call: what a client without retries sees. */
export const NO_RETRIES: RetryPolicy = { ...DEFAULT_RETRY_POLICY, maxAttempts: 1 };

/** Per-call choices. */
export interface CallChoices {
  /** An earlier key, to retry a write whose outcome was unknown; default: a fresh one. */
  idempotencyKey?: string;
  /** The caller's deadline for the whole logical call (milliseconds since the epoch). */
  deadline?: number;
  /** Aborts the logical call (no further attempt is made). */
  signal?: AbortSignal;
}

/** The attempts of one logical call. */
export interface Attempts {
  count: number;
  /** The code of each failed attempt, in order. */
  failures: Code[];
}

/** The answer to a write. */
export interface Written<T> {
  value: T;
  /** Whether this is the stored answer of an earlier attempt. */
  replayed: boolean;
  idempotencyKey: string;
  attempts: Attempts;
}

/** The google.rpc details of an error, decoded from `grpc-status-details-bin`. */
export interface StatusDetails {
  code: number;
  message: string;
  errorInfo?: ErrorInfo;
  badRequest?: BadRequest;
}

/** Decodes a `grpc-status-details-bin` value (base64, padded or not, or raw bytes). */
export function decodeStatusDetails(value: string | Uint8Array): StatusDetails {
  const bytes = typeof value === "string" ? Buffer.from(value, "base64") : value;
  const status = fromBinary(StatusSchema, bytes);
  const details: StatusDetails = { code: status.code, message: status.message };
  for (const any of status.details) {
    details.errorInfo ??= anyUnpack(any, ErrorInfoSchema);
    details.badRequest ??= anyUnpack(any, BadRequestSchema);
  }
  return details;
}

/** The details of a ConnectError: from the raw trailer when present, else as Connect parsed
 * them. */
export function statusDetailsOf(err: ConnectError): StatusDetails {
  const raw = err.metadata.get(STATUS_DETAILS_HEADER);
  if (raw) {
    return decodeStatusDetails(raw);
  }
  return {
    code: err.code,
    message: err.rawMessage,
    errorInfo: err.findDetails(ErrorInfoSchema)[0],
    badRequest: err.findDetails(BadRequestSchema)[0],
  };
}

/** A logical call that did not succeed. `cause` is the last attempt's ConnectError. */
export class TodoCallError extends Error {
  constructor(
    message: string,
    readonly cause: ConnectError,
    readonly attempts: Attempts,
  ) {
    super(message);
    this.name = new.target.name;
  }

  /** The gRPC code (a call the connection ended is UNAVAILABLE, see codeOf). */
  get code(): Code {
    return codeOf(this.cause);
  }
}

/** FAILED_PRECONDITION: the key was first used with a different request. Not retried. */
export class KeyReusedError extends TodoCallError {
  constructor(
    cause: ConnectError,
    attempts: Attempts,
    readonly idempotencyKey: string,
  ) {
    super(`idempotency key ${idempotencyKey} was first used with a different request`, cause, attempts);
  }
}

/** INVALID_ARGUMENT: `violations` names each wrong field. Not retried. */
export class InvalidArgumentError extends TodoCallError {
  readonly violations: { field: string; description: string }[];

  constructor(cause: ConnectError, attempts: Attempts) {
    const violations = (statusDetailsOf(cause).badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    }));
    super(
      `invalid argument: ${violations.map((v) => `${v.field}: ${v.description}`).join("; ")}`,
      cause,
      attempts,
    );
    this.violations = violations;
  }
}

/** Any other answer a retry would not change: NOT_FOUND, ABORTED, UNAUTHENTICATED, ... */
export class RejectedError extends TodoCallError {}

/** Every attempt failed with an unknown outcome and time or attempts ran out. A write may or
 * may not have happened: retry it later with `idempotencyKey` and the same request. */
export class OutcomeUnknownError extends TodoCallError {
  constructor(
    cause: ConnectError,
    attempts: Attempts,
    readonly idempotencyKey: string | undefined,
    /** The caller's signal stopped the call (its code is then CANCELED). */
    readonly abortedByCaller = false,
  ) {
    super(`outcome unknown after ${attempts.count} attempts: ${cause.message}`, cause, attempts);
  }

  override get code(): Code {
    return this.abortedByCaller ? Code.Canceled : codeOf(this.cause);
  }
}

/** Whether the connection, not the server, ended the call. Connect-ES keeps the local Node
 * error (ECONNRESET, a destroyed stream, a closed session) as the cause, whatever code it
 * chose for it (ABORTED, CANCELED, INTERNAL, ...); a stream the peer reset has the RST_STREAM
 * code in its message. Statuses the server sent have neither. */
export function isConnectionFailure(err: ConnectError): boolean {
  return (
    (err.cause !== undefined && !(err.cause instanceof ConnectError)) ||
    err.rawMessage.startsWith("http/2 stream closed with error code")
  );
}

/** Whether a failed attempt may succeed if sent again (for a write: its outcome is unknown).
 * `callerAborted`: the caller's own signal fired, so a CANCELED is final. */
export function isRetryable(err: ConnectError, callerAborted = false): boolean {
  switch (err.code) {
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return true;
    case Code.Canceled:
      return !callerAborted;
    default:
      return isConnectionFailure(err);
  }
}

/** The code gRPC means for a failed attempt: a call the connection ended (whatever code
 * Connect-ES gave it) is UNAVAILABLE. */
export function codeOf(err: ConnectError, callerAborted = false): Code {
  if (err.code === Code.DeadlineExceeded) return err.code;
  if (isConnectionFailure(err) || (err.code === Code.Canceled && !callerAborted)) return Code.Unavailable;
  return err.code;
}

/** A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. */
export function uuidv7(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  let millis = Date.now();
  for (let i = 5; i >= 0; i--) {
    bytes[i] = millis & 0xff;
    millis = Math.floor(millis / 256);
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Buffer.from(bytes).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** How to reach the service. */
export interface ClientOptions {
  /** e.g. `http://127.0.0.1:50051`, or `https://...` for TLS. */
  baseUrl: string;
  /** A bearer token, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Or a function returning the current token, asked again before every attempt (a rotating
   * credential, such as a projected service-account token re-read from disk). */
  tokenProvider?: () => string | Promise<string>;
  /** PEM CA certificate(s) to trust for TLS (default: the system's). */
  ca?: string | Buffer;
  retryPolicy?: Partial<RetryPolicy>;
  /** A transport of your own instead (baseUrl and ca are then ignored). */
  transport?: Transport;
}

function backoff(policy: RetryPolicy, retry: number): number {
  const ceiling = Math.min(policy.initialBackoffMs * policy.multiplier ** (retry - 1), policy.maxBackoffMs);
  return ceiling * (0.5 + Math.random() / 2);
}

function finalError(err: ConnectError, attempts: Attempts, key: string | undefined): TodoCallError {
  if (err.code === Code.FailedPrecondition && statusDetailsOf(err).errorInfo?.reason === KEY_REUSED_REASON) {
    return new KeyReusedError(err, attempts, key ?? "");
  }
  if (err.code === Code.InvalidArgument) {
    return new InvalidArgumentError(err, attempts);
  }
  return new RejectedError(err.message, err, attempts);
}

/** TodoService with safe retries. */
export class TodoClient {
  private readonly client: Client<typeof TodoService>;
  private readonly policy: RetryPolicy;
  private readonly tokenProvider?: () => string | Promise<string>;

  constructor(options: ClientOptions) {
    if (options.token !== undefined && options.tokenProvider !== undefined) {
      throw new TypeError("pass token or tokenProvider, not both");
    }
    const transport =
      options.transport ??
      createGrpcTransport({
        baseUrl: options.baseUrl,
        nodeOptions: options.ca ? { ca: options.ca } : undefined,
      });
    this.client = createClient(TodoService, transport);
    this.policy = { ...DEFAULT_RETRY_POLICY, ...options.retryPolicy };
    const token = options.token;
    this.tokenProvider = options.tokenProvider ?? (token === undefined ? undefined : () => token);
  }

  /** Creates a todo: one logical write, with a fresh key unless `choices.idempotencyKey`. */
  async createTodo(todo: MessageInitShape<typeof TodoSchema>, choices: CallChoices = {}): Promise<Written<Todo>> {
    return this.write(choices, (options) => this.client.createTodo({ todo }, options));
  }

  /** Updates a todo: every field, or those in `updateMask`; `todo.etag`, if set, must match. */
  async updateTodo(
    todo: MessageInitShape<typeof TodoSchema>,
    updateMask?: string[],
    choices: CallChoices = {},
  ): Promise<Written<Todo>> {
    const mask: FieldMask | undefined = updateMask ? ({ paths: updateMask } as FieldMask) : undefined;
    return this.write(choices, (options) => this.client.updateTodo({ todo, updateMask: mask }, options));
  }

  async getTodo(id: string, choices: CallChoices = {}): Promise<Todo> {
    return (await this.call(choices, undefined, (options) => this.client.getTodo({ id }, options))).value;
  }

  async listTodos(
    request: MessageInitShape<typeof ListTodosRequestSchema> = {},
    choices: CallChoices = {},
  ): Promise<ListTodosResponse> {
    return (await this.call(choices, undefined, (options) => this.client.listTodos(request, options))).value;
  }

  /** Every todo, following page tokens. */
  async *allTodos(pageSize = 1000): AsyncGenerator<Todo> {
    let pageToken = "";
    do {
      const page = await this.listTodos({ pageSize, pageToken });
      yield* page.todos;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Deletes a todo; succeeds whether or not it existed (so it is retried like a read). */
  async deleteTodo(id: string, etag = "", choices: CallChoices = {}): Promise<void> {
    await this.call(choices, undefined, (options) => this.client.deleteTodo({ id, etag }, options));
  }

  /** Marks the caller's todos with `ids` completed, all of them or none (one logical write);
   * answers them in the order of `ids`. An id that is not the caller's todo: RejectedError
   * (NOT_FOUND), and nothing changed. */
  async completeTodos(ids: string[], choices: CallChoices = {}): Promise<Written<Todo[]>> {
    const written = await this.write(choices, (options) => this.client.completeTodos({ ids }, options));
    return { ...written, value: written.value.todos };
  }

  private async write<T>(choices: CallChoices, send: (options: CallOptions) => Promise<T>): Promise<Written<T>> {
    const key = choices.idempotencyKey ?? uuidv7();
    let replayed = false;
    const { value, attempts } = await this.call(choices, key, (options) =>
      send({
        ...options,
        onHeader: (headers) => {
          replayed = headers.get(REPLAYED_HEADER) === "true";
        },
      }),
    );
    return { value, replayed, idempotencyKey: key, attempts };
  }

  private async call<T>(
    choices: CallChoices,
    key: string | undefined,
    send: (options: CallOptions) => Promise<T>,
  ): Promise<{ value: T; attempts: Attempts }> {
    const policy = this.policy;
    const end = Math.min(Date.now() + policy.budgetMs, choices.deadline ?? Infinity);
    const attempts: Attempts = { count: 0, failures: [] };
    for (;;) {
      const headers: Record<string, string> = {};
      if (key !== undefined) headers["idempotency-key"] = key;
      if (this.tokenProvider !== undefined) {
        headers["authorization"] = `Bearer ${(await this.tokenProvider()).trim()}`;
      }
      const timeoutMs = Math.max(1, Math.min(policy.attemptTimeoutMs, end - Date.now()));
      attempts.count += 1;
      try {
        const value = await send({ headers, timeoutMs, signal: choices.signal });
        return { value, attempts };
      } catch (reason) {
        const err = ConnectError.from(reason);
        const callerAborted = choices.signal?.aborted ?? false;
        if (callerAborted) {
          throw new OutcomeUnknownError(err, attempts, key, true);
        }
        if (!isRetryable(err)) {
          throw finalError(err, attempts, key);
        }
        attempts.failures.push(codeOf(err));
        const pause = backoff(policy, attempts.count);
        if (attempts.count >= policy.maxAttempts || Date.now() + pause >= end) {
          throw new OutcomeUnknownError(err, attempts, key);
        }
        try {
          await sleep(pause, undefined, { signal: choices.signal });
        } catch {
          throw new OutcomeUnknownError(new ConnectError("aborted by the caller", Code.Canceled), attempts, key, true);
        }
      }
    }
  }
}
