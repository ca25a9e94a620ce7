// A kodo-bus client in plain Node.js (>= 18, ESM, no build step), written from subjects.md and
// schemas/ alone: it never reads the Python code. Every subject, field and error kind used here
// is the one those documents name.
//
//   import { Kodo } from "./kodo.mjs";
//   const kb = await Kodo.connect("nats://127.0.0.1:4222");
//   const flow = await kb.flow("hello");
//   const ex = await kb.launch(flow, { name: "Ada" });   // subscribes first, then launches
//   for await (const event of ex.events()) console.log(event.kind, event.data);

import { randomBytes } from "node:crypto";

import Ajv2020 from "ajv/dist/2020.js";
import { connect, createInbox, headers as natsHeaders, ErrorCode } from "nats";

const JSON_TYPE = "application/json";
export const TERMINAL = new Set(["finished", "error", "cancelled", "timeout", "lost"]);

/** An `ErrorReply` (subjects.md, Error kinds): `kind` is its `error`, `fields` per field. */
export class KodoError extends Error {
  constructor(kind, message, fields = []) {
    super(`${kind}: ${message}`);
    this.kind = kind;
    this.fields = fields;
  }
}

/** Inputs refused locally by the flow's `input_schema` (nothing was sent). */
export class InvalidInputs extends Error {
  constructor(problems) {
    super(`invalid inputs: ${problems.map((p) => `${p.field}: ${p.message}`).join("; ")}`);
    this.problems = problems;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function jsonBody(value) {
  return encoder.encode(JSON.stringify(value));
}

function jsonHeaders() {
  const h = natsHeaders();
  h.set("Content-Type", JSON_TYPE);
  return h;
}

/** A reply: its JSON body, or the `KodoError` its `Kodo-Error` header stands for. */
function decodeReply(msg) {
  const body = JSON.parse(decoder.decode(msg.data));
  const kind = msg.headers?.get("Kodo-Error");
  if (kind) throw new KodoError(kind, body.message ?? "", body.fields ?? []);
  return body;
}

/** The events of one message: one `Event`, or an array of them for a burst (`EventBurst`). */
export function eventsOf(msg) {
  const body = JSON.parse(decoder.decode(msg.data));
  return Array.isArray(body) ? body : [body];
}

/** 32 random hex digits: an execution id of our own (`LaunchRequest.execution`). */
export function newExecutionId() {
  return randomBytes(16).toString("hex");
}

/** A validator of a JSON schema (draft 2020-12, as in schemas/ and `FlowItem.input_schema`). */
export function validator(schema) {
  const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
  const check = ajv.compile(schema && Object.keys(schema).length ? schema : {});
  return (value) => {
    if (check(value)) return [];
    return check.errors.map((e) => {
      let field = e.instancePath.replace(/^\//, "").replaceAll("/", ".");
      if (e.keyword === "additionalProperties") {
        field = [field, e.params.additionalProperty].filter(Boolean).join(".");
      } else if (e.keyword === "required") {
        field = [field, e.params.missingProperty].filter(Boolean).join(".");
      }
      return { field: field || "(root)", message: e.message };
    });
  };
}

export class Kodo {
  constructor(nc, user) {
    this.nc = nc;
    this.user = user;
  }

  /** `user` is the `<user>` of the subjects: `local` on a development bus without auth. */
  static async connect(servers, user = "local") {
    return new Kodo(await connect({ servers }), user);
  }

  async close() {
    await this.nc.drain();
  }

  /** One JSON request; its reply, or the `KodoError` of an `ErrorReply`. */
  async request(subject, body, timeout = 5000) {
    const msg = await this.nc.request(subject, jsonBody(body), { timeout, headers: jsonHeaders() });
    return decodeReply(msg);
  }

  /** Every kodo-bus service on the bus ($SRV.PING): the kodo id is `metadata.id`, not the
   * micro `id` (a NUID, new at each start); the `kodo.svc.<id>.*` subjects take the kodo id. */
  async services(wait = 500) {
    const inbox = createInbox();
    const sub = this.nc.subscribe(inbox);
    this.nc.publish("$SRV.PING.kodo-bus", new Uint8Array(), { reply: inbox });
    const found = new Map();
    const timer = setTimeout(() => sub.unsubscribe(), wait);
    for await (const msg of sub) {
      if (!msg.data.length) continue; // a status (no responders yet), not a service
      const ping = JSON.parse(decoder.decode(msg.data));
      const meta = ping.metadata ?? {};
      found.set(meta.id, { id: meta.id, role: meta.role, micro: ping.id });
    }
    clearTimeout(timer);
    return [...found.values()];
  }

  /** Flows from a registry's view (a `FlowsQuery` on `kodo.svc.<id>.flows`), or from a node
   * when no registry runs. */
  async flows(query = {}) {
    const services = await this.services();
    const registry = services.find((s) => s.role === "registry" || s.role === "hybrid");
    const asked = registry ? [registry] : services.filter((s) => s.role === "node");
    const items = [];
    for (const service of asked) {
      const page = await this.request(`kodo.svc.${service.id}.flows`, { limit: 1000, ...query });
      items.push(...page.items);
    }
    return items;
  }

  /** One flow by name ("node/name" to pick the node), online. */
  async flow(name) {
    const [node, flow] = name.includes("/") ? name.split("/") : [null, name];
    const found = (await this.flows({ q: null })).filter(
      (f) => f.name === flow && (!node || f.node === node) && f.status !== "offline",
    );
    if (found.length !== 1) {
      throw new KodoError("not_found", `${found.length} online flows named ${name}`);
    }
    return found[0];
  }

  /** Launch with an id of our own, subscribed to the execution's events BEFORE the request
   * (subjects.md: a flow may emit milliseconds after the reply). `check: false` sends inputs
   * the local validation refuses (to see the node refuse them too). */
  async launch(flow, inputs, { execution = newExecutionId(), timeout, check = true } = {}) {
    if (check) {
      const problems = validator(flow.input_schema)(inputs);
      if (problems.length) throw new InvalidInputs(problems);
    }
    const events = new Inlet(this.nc, `kodo.events.${this.user}.${execution}.*`);
    await this.nc.flush(); // the server has the subscription before anything is launched
    const body = { v: 1, inputs, execution };
    if (timeout !== undefined) body.timeout = timeout;
    let reply;
    try {
      reply = await this.request(`kodo.launch.${this.user}.${flow.node}.${flow.name}`, body, 10000);
    } catch (err) {
      events.unsubscribe();
      throw err;
    }
    return new Execution(this, reply, events);
  }

  /** An execution's stored events from the stream KODO_EVENTS (an ordered consumer), up to its
   * terminal status: what a late reader sees. */
  async replay(execution, timeout = 10000) {
    const js = this.nc.jetstream();
    const consumer = await js.consumers.get("KODO_EVENTS", {
      filterSubjects: [`kodo.events.${this.user}.${execution}.*`],
    });
    const out = [];
    const messages = await consumer.consume();
    const timer = setTimeout(() => messages.stop(), timeout);
    try {
      for await (const msg of messages) {
        for (const event of eventsOf(msg)) {
          out.push(event);
          if (event.kind === "status" && TERMINAL.has(event.data?.status)) {
            messages.stop();
          }
        }
      }
    } finally {
      clearTimeout(timer);
    }
    return out;
  }

  async cancel(execution) {
    return this.request(`kodo.exec.${this.user}.${execution}.cancel`, {});
  }

  async answer(execution, data) {
    return this.request(`kodo.exec.${this.user}.${execution}.answer`, { data });
  }
}

/** A subscription whose messages wait in a queue until read: several readers may take turns
 * (iterating a nats.js subscription and leaving the loop would end the subscription). */
class Inlet {
  constructor(nc, subject) {
    this.queue = [];
    this.waiting = null;
    this.sub = nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        this.queue.push(msg);
        this.waiting?.();
      },
    });
  }

  /** The next message, or null after `timeout` ms. */
  async next(timeout) {
    if (!this.queue.length) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, timeout);
        this.waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiting = null;
    }
    return this.queue.shift() ?? null;
  }

  unsubscribe() {
    this.sub.unsubscribe();
  }
}

export class Execution {
  constructor(kodo, reply, subscription) {
    this.kodo = kodo;
    this.reply = reply; // LaunchReply: execution, node, flow, launcher, subject, existing
    this.id = reply.execution;
    this.sub = subscription;
    this.seen = [];
    this.messages = 0;
    this.bursts = 0;
    this.done = false;
    this.pending = [];
  }

  /** Live events, up to the terminal status (bursts unpacked); `timeout` ms between two
   * messages at most. Several loops may take turns: each goes on where the last stopped. */
  async *events(timeout = 60000) {
    for (;;) {
      while (this.pending.length) yield this.pending.shift();
      if (this.done) return;
      const msg = await this.sub.next(timeout);
      if (msg === null) throw new Error(`execution ${this.id}: no event within ${timeout} ms`);
      const body = JSON.parse(decoder.decode(msg.data));
      this.messages += 1;
      if (Array.isArray(body)) this.bursts += 1;
      for (const event of Array.isArray(body) ? body : [body]) {
        this.seen.push(event);
        this.pending.push(event);
        if (event.kind === "status" && TERMINAL.has(event.data?.status)) {
          this.done = true;
          this.sub.unsubscribe();
        }
      }
    }
  }

  /** Follow to the end; every event, checked to be seqs 1..n without a gap. */
  async all(timeout = 60000) {
    for await (const _ of this.events(timeout)) {
      // collected in this.seen
    }
    const events = [...this.seen].sort((a, b) => a.seq - b.seq);
    events.forEach((event, i) => {
      if (event.seq !== i + 1) {
        throw new Error(`execution ${this.id}: seq ${event.seq} where ${i + 1} was due`);
      }
    });
    return events;
  }

  cancel() {
    return this.kodo.cancel(this.id);
  }

  answer(data) {
    return this.kodo.answer(this.id, data);
  }
}

/** Whether `err` is NATS's no responders (nobody listens on the subject). */
export function isNoResponders(err) {
  return err?.code === ErrorCode.NoResponders;
}
