"""Conformance functions written with the official StateFun Python SDK (apache-flink-statefun
3.3.0), served with aiohttp. The contract is in conformance/README.md."""

import json
import os
from datetime import timedelta

from aiohttp import web
from statefun import (
    BoolType,
    Context,
    DoubleType,
    FloatType,
    IntType,
    LongType,
    Message,
    RequestReplyHandler,
    StatefulFunctions,
    StringType,
    ValueSpec,
    kafka_egress_message,
    make_json_type,
    message_builder,
)

NS = "py"
OUT_EGRESS = "conformance/out"
OUT_TOPIC = os.environ["CONFORMANCE_OUT_TOPIC"]
GREETINGS_TOPIC = os.environ["CONFORMANCE_GREETINGS_TOPIC"]

COMMAND = make_json_type("conformance/Command")
PROFILE = make_json_type("conformance/Profile")
LOGIN = make_json_type("conformance/Login")
VISIT = make_json_type("conformance/Visit")

# kind -> (SDK type, to JSON, from JSON); longs travel as decimal strings in reports.
KINDS = {
    "bool": (BoolType, lambda v: v, lambda v: v),
    "int": (IntType, lambda v: v, lambda v: v),
    "long": (LongType, lambda v: str(v), lambda v: int(v)),
    "float": (FloatType, lambda v: v, lambda v: v),
    "double": (DoubleType, lambda v: v, lambda v: v),
    "string": (StringType, lambda v: v, lambda v: v),
    "json": (PROFILE, lambda v: v, lambda v: v),
}
TYPED = {kind: "a_" + kind for kind in KINDS}

functions = StatefulFunctions()


def address_text(address):
    return None if address is None else f"{address.typename}/{address.id}"


def report(ctx: Context, body: dict):
    ctx.send_egress(
        kafka_egress_message(
            typename=OUT_EGRESS,
            topic=OUT_TOPIC,
            key=f"{NS}:{ctx.address.id}",
            value=json.dumps(body),
        )
    )


def on_command(ctx: Context, cmd: dict):
    op, out = cmd["op"], {"op": cmd["op"], "n": cmd.get("n")}
    storage = ctx.storage
    if op == "set":
        for kind, (_, _, from_json) in KINDS.items():
            setattr(storage, TYPED[kind], from_json(cmd["values"][kind]))
    elif op == "get":
        values = {}
        for kind, (_, to_json, _) in KINDS.items():
            value = getattr(storage, TYPED[kind])
            values[kind] = None if value is None else to_json(value)
        out["values"] = values
    elif op == "clear":
        for name in TYPED.values():
            delattr(storage, name)
    elif op == "ttl-set":
        storage.ttl_write = 1
        storage.ttl_call = 1
    elif op == "ttl-get":
        out["write"] = storage.ttl_write
        out["call"] = storage.ttl_call
    elif op == "delay":
        msg = message_builder(
            target_typename=ctx.address.typename,
            target_id=ctx.address.id,
            str_value="fired:" + cmd["tag"],
        )
        if "token" in cmd:
            ctx.send_after(timedelta(milliseconds=cmd["ms"]), msg, cancellation_token=cmd["token"])
        else:
            ctx.send_after(timedelta(milliseconds=cmd["ms"]), msg)
    elif op == "cancel":
        ctx.cancel_delayed_message(cmd["token"])
    elif op == "send":
        tpe, _, from_json = KINDS[cmd["kind"]]
        ctx.send(
            message_builder(
                target_typename=cmd["to"],
                target_id=cmd["id"],
                value=from_json(cmd["value"]),
                value_type=tpe,
            )
        )
    else:
        raise ValueError(f"unknown op {op}")
    report(ctx, out)


@functions.bind(
    typename=f"{NS}/conformance",
    specs=[ValueSpec(name=TYPED[kind], type=tpe) for kind, (tpe, _, _) in KINDS.items()]
    + [
        ValueSpec(name="ttl_write", type=IntType, expire_after_write=timedelta(seconds=2)),
        ValueSpec(name="ttl_call", type=IntType, expire_after_call=timedelta(seconds=2)),
    ],
)
def conformance(ctx: Context, message: Message):
    if message.is_type(COMMAND):
        on_command(ctx, message.as_type(COMMAND))
        return
    if message.is_string():
        text = message.as_string()
        if text.startswith("fired:"):
            report(ctx, {"op": "fired", "tag": text[len("fired:"):]})
            return
        if text.startswith("ack:"):
            report(ctx, {"op": "ack", "kind": text[len("ack:"):], "from": address_text(ctx.caller)})
            return
    for kind, (tpe, to_json, _) in KINDS.items():
        if message.is_type(tpe):
            value = to_json(message.as_type(tpe))
            report(ctx, {"op": "recv", "kind": kind, "value": value, "from": address_text(ctx.caller)})
            if ctx.caller is not None:
                ctx.send(
                    message_builder(
                        target_typename=ctx.caller.typename,
                        target_id=ctx.caller.id,
                        str_value="ack:" + kind,
                    )
                )
            return
    raise ValueError(f"unexpected message type {message.value_typename()}")


@functions.bind(typename=f"{NS}/person", specs=[ValueSpec(name="seen", type=IntType)])
def person(ctx: Context, message: Message):
    login = message.as_type(LOGIN)
    seen = (ctx.storage.seen or 0) + 1
    ctx.storage.seen = seen
    ctx.send(
        message_builder(
            target_typename=f"{NS}/greeter",
            target_id=ctx.address.id,
            value={"name": login["name"], "visits": seen},
            value_type=VISIT,
        )
    )


@functions.bind(typename=f"{NS}/greeter")
def greeter(ctx: Context, message: Message):
    visit = message.as_type(VISIT)
    if visit["visits"] == 1:
        greeting = f"Hello {visit['name']}! Welcome."
    else:
        greeting = f"Hello {visit['name']}! Visit #{visit['visits']}."
    ctx.send_egress(
        kafka_egress_message(
            typename=OUT_EGRESS, topic=GREETINGS_TOPIC, key=visit["name"], value=greeting
        )
    )


handler = RequestReplyHandler(functions)


async def serve(request: web.Request) -> web.Response:
    body = await request.read()
    result = await handler.handle_async(body)
    return web.Response(body=result, content_type="application/octet-stream")


if __name__ == "__main__":
    app = web.Application()
    app.add_routes([web.post("/statefun", serve)])
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), print=None)
