// Walks through everything a client does on kodo-bus, against a running bus (`kodo-bus up`):
// discovery, input validation, a launch with our own id, live events (bursts included), a
// question answered, a cancel, a replay — and the error replies of each wrong request.
//
//   KODO_NATS=nats://127.0.0.1:4222 node demo.mjs
//
// Prints one JSON line per step ({"step": ..., ...}) and exits 1 at the first check that fails.

import { InvalidInputs, Kodo, KodoError, newExecutionId, validator } from "./kodo.mjs";

const url = (process.env.KODO_NATS ?? "nats://127.0.0.1:4222").split(",")[0];
const wanted = ["hello", "hitl", "throughput"]; // the example flows `kodo-bus up` serves

function step(name, details = {}) {
  console.log(JSON.stringify({ step: name, ...details }));
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

async function refused(promise, kind) {
  try {
    await promise;
  } catch (err) {
    if (err instanceof KodoError && err.kind === kind) return err;
    throw err;
  }
  throw new Error(`expected an ErrorReply ${kind}, got a reply`);
}

async function discover(kb) {
  const deadline = Date.now() + 60000;
  for (;;) {
    const services = await kb.services();
    const flows = services.length ? await kb.flows() : [];
    const online = flows.filter((f) => f.status !== "offline");
    const found = Object.fromEntries(wanted.map((n) => [n, online.find((f) => f.name === n)]));
    if (wanted.every((n) => found[n])) {
      step("discover", {
        services: services.map((s) => ({ id: s.id, role: s.role })),
        flows: online.length,
      });
      return found;
    }
    if (Date.now() > deadline) throw new Error(`flows ${wanted} not found (${services.length} services)`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function waitFor(execution, kind) {
  for await (const event of execution.events()) {
    if (event.kind === kind) return event;
  }
  throw new Error(`execution ${execution.id} ended without a ${kind} event`);
}

async function main() {
  const kb = await Kodo.connect(url);
  try {
    const flows = await discover(kb);

    // Inputs checked against the flow's JSON schema before anything is sent...
    const hello = flows.hello;
    check(validator(hello.input_schema)({ name: "Ada" }).length === 0, "valid inputs pass");
    try {
      await kb.launch(hello, { name: "Ada", colour: "red" });
      throw new Error("unknown input accepted locally");
    } catch (err) {
      if (!(err instanceof InvalidInputs)) throw err;
      check(err.problems.some((p) => p.field === "colour"), "the unknown input is named");
    }
    // ...and by the node too, for a client that did not check.
    const bad = await refused(kb.launch(hello, { name: "Ada", colour: "red" }, { check: false }), "invalid_inputs");
    check(bad.fields.some((f) => f.field === "colour"), "the node names the unknown input");
    step("validate", { local: "colour", node: bad.kind });

    // A launch with our own id: subscribed first, so no event is missed.
    const id = newExecutionId();
    const ex = await kb.launch(hello, { name: "Ada" }, { execution: id });
    check(ex.id === id && ex.reply.existing === false, "the node took our id");
    const events = await ex.all();
    const kinds = events.map((e) => e.kind);
    check(kinds[0] === "meta" && kinds[1] === "inputs", "meta and inputs come first");
    const final = events.find((e) => e.kind === "final");
    check(final?.data === "Hello, **Ada**!", "the final value");
    check(events.at(-1).data.status === "finished", "ends finished");
    check(events.every((e) => e.parent === undefined && e.root === id), "top-level: root, no parent");
    const again = await kb.launch(hello, { name: "Ada" }, { execution: id });
    check(again.reply.existing === true, "the same id is the same execution");
    again.sub.unsubscribe();
    step("launch", { execution: id, events: events.length, kinds, existing: again.reply.existing });

    // Bursts: output emitted faster than it goes out arrives as arrays of events.
    const fast = await kb.launch(flows.throughput, { rate: 100000, duration: 0.01 });
    const burst = await fast.all();
    const markdown = burst.filter((e) => e.kind === "markdown").length;
    check(markdown === 1000, `1000 markdown events (got ${markdown})`);
    step("bursts", { events: burst.length, messages: fast.messages, bursts: fast.bursts });

    // A question: the `lock` event carries the answer's schema; a wrong answer is refused
    // field by field and the question stays open; a second answer finds it closed.
    const asking = await kb.launch(flows.hitl, {});
    const lock = await waitFor(asking, "lock");
    const answerCheck = validator(lock.data.schema);
    check(answerCheck({ approved: "maybe" }).length > 0, "the lock schema refuses a bad answer");
    const wrong = await refused(asking.answer({ approved: "maybe" }), "invalid_inputs");
    check(wrong.fields.some((f) => f.field === "approved"), "the bad field is named");
    const ack = await asking.answer({ approved: true, comment: "from node" });
    check(ack.ok === true, "the answer is taken");
    const late = await refused(asking.answer({ approved: false }), "closed");
    const answered = await asking.all();
    const verdict = answered.find((e) => e.kind === "final")?.data;
    check(verdict?.approved === true && verdict.comment === "from node", "the flow got our answer");
    step("answer", { execution: asking.id, wrong: wrong.kind, second: late.kind, final: verdict });

    // A cancel: the execution waiting on its question ends `cancelled`; a second cancel and an
    // answer to it get `not_found` and `closed`; an unknown id gets `not_found`.
    const waiting = await kb.launch(flows.hitl, {});
    await waitFor(waiting, "lock");
    const cancelled = await waiting.cancel();
    check(cancelled.ok === true, "the cancel is taken");
    const ended = await waiting.all();
    check(ended.at(-1).data.status === "cancelled", "ends cancelled");
    const twice = await refused(kb.cancel(waiting.id), "not_found");
    const closed = await refused(kb.answer(waiting.id, { approved: true }), "closed");
    const unknown = await refused(kb.cancel(newExecutionId()), "not_found");
    const nobody = await refused(kb.answer(newExecutionId(), { approved: true }), "not_found");
    step("cancel", {
      execution: waiting.id,
      status: ended.at(-1).data.status,
      again: twice.kind,
      answer: closed.kind,
      unknown: [unknown.kind, nobody.kind],
    });

    // A replay: a late reader gets the same events from the stream.
    const replayed = await kb.replay(id);
    const same = JSON.stringify(replayed.map((e) => [e.seq, e.kind, e.data]));
    check(same === JSON.stringify(events.map((e) => [e.seq, e.kind, e.data])), "replay = live");
    step("replay", { execution: id, events: replayed.length });
    step("done", { ok: true });
  } finally {
    await kb.close();
  }
}

main().catch((err) => {
  console.error(err?.stack ?? String(err));
  process.exit(1);
});
