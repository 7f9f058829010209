// Conformance functions written with the official StateFun JavaScript SDK
// (apache-flink-statefun 3.3.0 on npm), served with node's http module.
// The contract is in conformance/README.md.
"use strict";

const http = require("http");
const { StateFun, messageBuilder, kafkaEgressMessage } = require("apache-flink-statefun");

const NS = "js";
const OUT_EGRESS = "conformance/out";
const OUT_TOPIC = required("CONFORMANCE_OUT_TOPIC");
const GREETINGS_TOPIC = required("CONFORMANCE_GREETINGS_TOPIC");

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

// The JavaScript SDK has no long or double type (it ships bool, int, float, string). Both
// are StateFun built-ins, so they are declared here with StateFun.customType under the
// built-in type names: a protobuf wrapper whose field 1 is an sfixed64 / double
// (tag 0x09, 8 bytes little-endian; proto3 writes nothing for 0).
function fixed64Type(typename, write, read, zero) {
  return StateFun.customType(
    typename,
    (value) => {
      const buf = Buffer.alloc(9);
      buf[0] = 0x09;
      write(buf, value);
      return buf;
    },
    (buf) => {
      if (buf.length === 0) {
        return zero;
      }
      if (buf.length !== 9 || buf[0] !== 0x09) {
        throw new Error(`${typename}: unexpected encoding ${buf.toString("hex")}`);
      }
      return read(buf);
    }
  );
}
const LONG_TYPE = fixed64Type(
  "io.statefun.types/long",
  (buf, v) => buf.writeBigInt64LE(BigInt(v), 1),
  (buf) => buf.readBigInt64LE(1),
  0n
);
const DOUBLE_TYPE = fixed64Type(
  "io.statefun.types/double",
  (buf, v) => buf.writeDoubleLE(v, 1),
  (buf) => buf.readDoubleLE(1),
  0
);

const COMMAND = StateFun.jsonType("conformance/Command");
const PROFILE = StateFun.jsonType("conformance/Profile");
const LOGIN = StateFun.jsonType("conformance/Login");
const VISIT = StateFun.jsonType("conformance/Visit");

const same = (v) => v;
// kind -> [SDK type, to JSON, from JSON]; longs travel as decimal strings in reports.
const KINDS = {
  bool: [StateFun.booleanType(), same, same],
  int: [StateFun.intType(), same, same],
  long: [LONG_TYPE, (v) => v.toString(), (v) => BigInt(v)],
  float: [StateFun.floatType(), same, same],
  double: [DOUBLE_TYPE, same, same],
  string: [StateFun.stringType(), same, same],
  json: [PROFILE, same, same],
};
const typed = (kind) => `a_${kind}`;

function addressText(address) {
  return address ? `${address.namespace}/${address.name}/${address.id}` : null;
}

function report(context, body) {
  context.send(
    kafkaEgressMessage({
      typename: OUT_EGRESS,
      topic: OUT_TOPIC,
      key: `${NS}:${context.self.id}`,
      value: JSON.stringify(body),
    })
  );
}

function onCommand(context, cmd) {
  const out = { op: cmd.op, n: cmd.n };
  const storage = context.storage;
  switch (cmd.op) {
    case "set":
      for (const [kind, [, , fromJson]] of Object.entries(KINDS)) {
        storage[typed(kind)] = fromJson(cmd.values[kind]);
      }
      break;
    case "get":
      out.values = {};
      for (const [kind, [, toJson]] of Object.entries(KINDS)) {
        const value = storage[typed(kind)];
        out.values[kind] = value === null ? null : toJson(value);
      }
      break;
    case "clear":
      for (const kind of Object.keys(KINDS)) {
        storage[typed(kind)] = null;
      }
      break;
    case "ttl-set":
      storage.ttl_write = 1;
      storage.ttl_call = 1;
      break;
    case "ttl-get":
      out.write = storage.ttl_write;
      out.call = storage.ttl_call;
      break;
    case "delay": {
      const msg = messageBuilder({
        typename: context.self.typename,
        id: context.self.id,
        value: `fired:${cmd.tag}`,
        valueType: StateFun.stringType(),
      });
      if (cmd.token !== undefined) {
        context.sendAfter(cmd.ms, msg, cmd.token);
      } else {
        context.sendAfter(cmd.ms, msg);
      }
      break;
    }
    case "cancel":
      context.cancelDelayedMessage(cmd.token);
      break;
    case "send": {
      const [type, , fromJson] = KINDS[cmd.kind];
      context.send(
        messageBuilder({ typename: cmd.to, id: cmd.id, value: fromJson(cmd.value), valueType: type })
      );
      break;
    }
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
  report(context, out);
}

const statefun = new StateFun();

statefun.bind({
  typename: `${NS}/conformance`,
  specs: [
    ...Object.entries(KINDS).map(([kind, [type]]) => ({ name: typed(kind), type })),
    { name: "ttl_write", type: StateFun.intType(), expireAfterWrite: 2000 },
    { name: "ttl_call", type: StateFun.intType(), expireAfterCall: 2000 },
  ],
  fn(context, message) {
    if (message.is(COMMAND)) {
      onCommand(context, message.as(COMMAND));
      return;
    }
    if (message.isString()) {
      const text = message.asString();
      if (text.startsWith("fired:")) {
        report(context, { op: "fired", tag: text.slice("fired:".length) });
        return;
      }
      if (text.startsWith("ack:")) {
        report(context, { op: "ack", kind: text.slice("ack:".length), from: addressText(context.caller) });
        return;
      }
    }
    for (const [kind, [type, toJson]] of Object.entries(KINDS)) {
      if (message.is(type)) {
        const value = toJson(message.as(type));
        report(context, { op: "recv", kind, value, from: addressText(context.caller) });
        if (context.caller) {
          context.send(
            messageBuilder({
              typename: context.caller.typename,
              id: context.caller.id,
              value: `ack:${kind}`,
              valueType: StateFun.stringType(),
            })
          );
        }
        return;
      }
    }
    throw new Error(`unexpected message type ${message.valueTypeName}`);
  },
});

statefun.bind({
  typename: `${NS}/person`,
  specs: [{ name: "seen", type: StateFun.intType() }],
  fn(context, message) {
    const login = message.as(LOGIN);
    const seen = (context.storage.seen || 0) + 1;
    context.storage.seen = seen;
    context.send(
      messageBuilder({
        typename: `${NS}/greeter`,
        id: context.self.id,
        value: { name: login.name, visits: seen },
        valueType: VISIT,
      })
    );
  },
});

statefun.bind({
  typename: `${NS}/greeter`,
  fn(context, message) {
    const visit = message.as(VISIT);
    const greeting =
      visit.visits === 1
        ? `Hello ${visit.name}! Welcome.`
        : `Hello ${visit.name}! Visit #${visit.visits}.`;
    context.send(
      kafkaEgressMessage({ typename: OUT_EGRESS, topic: GREETINGS_TOPIC, key: visit.name, value: greeting })
    );
  },
});

const port = Number(process.env.PORT || 8000);
http.createServer(statefun.handler()).listen(port, "127.0.0.1");
