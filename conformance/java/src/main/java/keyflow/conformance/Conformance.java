package keyflow.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.NullNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.function.Function;
import org.apache.flink.statefun.sdk.java.Address;
import org.apache.flink.statefun.sdk.java.AddressScopedStorage;
import org.apache.flink.statefun.sdk.java.Context;
import org.apache.flink.statefun.sdk.java.StatefulFunctionSpec;
import org.apache.flink.statefun.sdk.java.StatefulFunctions;
import org.apache.flink.statefun.sdk.java.TypeName;
import org.apache.flink.statefun.sdk.java.ValueSpec;
import org.apache.flink.statefun.sdk.java.io.KafkaEgressMessage;
import org.apache.flink.statefun.sdk.java.message.Message;
import org.apache.flink.statefun.sdk.java.message.MessageBuilder;
import org.apache.flink.statefun.sdk.java.types.Type;
import org.apache.flink.statefun.sdk.java.types.Types;

/** {@code java/conformance}, {@code java/person} and {@code java/greeter}: see conformance/README.md. */
final class Conformance {
  static final String NS = "java";
  static final TypeName CONFORMANCE = TypeName.typeNameOf(NS, "conformance");
  static final TypeName PERSON = TypeName.typeNameOf(NS, "person");
  static final TypeName GREETER = TypeName.typeNameOf(NS, "greeter");
  static final TypeName OUT = TypeName.typeNameFromString("conformance/out");

  static final Type<JsonNode> COMMAND = Json.tree("conformance/Command");
  static final Type<JsonNode> PROFILE = Json.tree("conformance/Profile");
  static final Type<JsonNode> LOGIN = Json.tree("conformance/Login");
  static final Type<JsonNode> VISIT = Json.tree("conformance/Visit");

  static final ValueSpec<Integer> TTL_WRITE =
      ValueSpec.named("ttl_write").thatExpireAfterWrite(Duration.ofSeconds(2)).withIntType();
  static final ValueSpec<Integer> TTL_CALL =
      ValueSpec.named("ttl_call").thatExpiresAfterCall(Duration.ofSeconds(2)).withIntType();
  static final ValueSpec<Integer> SEEN = ValueSpec.named("seen").withIntType();

  private static final JsonNodeFactory NODES = JsonNodeFactory.instance;

  /** One value kind of the contract: its SDK type, its state, and its JSON form. */
  static final class Kind<T> {
    final String name;
    final Type<T> type;
    final ValueSpec<T> state;
    final Function<JsonNode, T> fromJson;
    final Function<T, JsonNode> toJson;

    Kind(
        String name,
        Type<T> type,
        ValueSpec<T> state,
        Function<JsonNode, T> fromJson,
        Function<T, JsonNode> toJson) {
      this.name = name;
      this.type = type;
      this.state = state;
      this.fromJson = fromJson;
      this.toJson = toJson;
    }

    JsonNode stored(AddressScopedStorage storage) {
      Optional<T> value = storage.get(state);
      return value.map(toJson).orElse(NullNode.getInstance());
    }

    void store(AddressScopedStorage storage, JsonNode json) {
      storage.set(state, fromJson.apply(json));
    }

    Message message(Address target, JsonNode json) {
      return MessageBuilder.forAddress(target).withCustomType(type, fromJson.apply(json)).build();
    }

    JsonNode received(Message message) {
      return toJson.apply(message.as(type));
    }
  }

  static final List<Kind<?>> KINDS =
      List.of(
          new Kind<>(
              "bool",
              Types.booleanType(),
              ValueSpec.named("a_bool").withBooleanType(),
              JsonNode::booleanValue,
              NODES::booleanNode),
          new Kind<>(
              "int",
              Types.integerType(),
              ValueSpec.named("a_int").withIntType(),
              JsonNode::intValue,
              NODES::numberNode),
          new Kind<>(
              "long",
              Types.longType(),
              ValueSpec.named("a_long").withLongType(),
              json -> Long.parseLong(json.textValue()),
              value -> NODES.textNode(Long.toString(value))),
          new Kind<>(
              "float",
              Types.floatType(),
              ValueSpec.named("a_float").withFloatType(),
              JsonNode::floatValue,
              NODES::numberNode),
          new Kind<>(
              "double",
              Types.doubleType(),
              ValueSpec.named("a_double").withDoubleType(),
              JsonNode::doubleValue,
              NODES::numberNode),
          new Kind<>(
              "string",
              Types.stringType(),
              ValueSpec.named("a_string").withUtf8StringType(),
              JsonNode::textValue,
              NODES::textNode),
          new Kind<>(
              "json",
              PROFILE,
              ValueSpec.named("a_json").withCustomType(PROFILE),
              json -> json,
              value -> value));

  private Conformance() {}

  static void register(StatefulFunctions functions) {
    StatefulFunctionSpec.Builder conformance =
        StatefulFunctionSpec.builder(CONFORMANCE)
            .withValueSpecs(TTL_WRITE, TTL_CALL)
            .withSupplier(() -> Conformance::conformance);
    for (Kind<?> kind : KINDS) {
      conformance.withValueSpec(kind.state);
    }
    functions.withStatefulFunction(conformance);
    functions.withStatefulFunction(
        StatefulFunctionSpec.builder(PERSON)
            .withValueSpec(SEEN)
            .withSupplier(() -> Conformance::person));
    functions.withStatefulFunction(
        StatefulFunctionSpec.builder(GREETER).withSupplier(() -> Conformance::greeter));
  }

  static Kind<?> kind(String name) {
    return KINDS.stream()
        .filter(k -> k.name.equals(name))
        .findFirst()
        .orElseThrow(() -> new IllegalArgumentException("unknown kind " + name));
  }

  static JsonNode addressText(Optional<Address> address) {
    return address
        .<JsonNode>map(
            a -> NODES.textNode(a.type().namespace() + "/" + a.type().name() + "/" + a.id()))
        .orElse(NullNode.getInstance());
  }

  static void report(Context context, ObjectNode body) {
    context.send(
        KafkaEgressMessage.forEgress(OUT)
            .withTopic(env("CONFORMANCE_OUT_TOPIC"))
            .withUtf8Key(NS + ":" + context.self().id())
            .withUtf8Value(Json.text(body))
            .build());
  }

  static String env(String name) {
    String value = System.getenv(name);
    if (value == null || value.isEmpty()) {
      throw new IllegalStateException(name + " is not set");
    }
    return value;
  }

  static CompletableFuture<Void> conformance(Context context, Message message) {
    if (message.is(COMMAND)) {
      onCommand(context, message.as(COMMAND));
      return context.done();
    }
    if (message.isUtf8String()) {
      String text = message.asUtf8String();
      if (text.startsWith("fired:")) {
        ObjectNode out = Json.object().put("op", "fired").put("tag", text.substring(6));
        report(context, out);
        return context.done();
      }
      if (text.startsWith("ack:")) {
        ObjectNode out = Json.object().put("op", "ack").put("kind", text.substring(4));
        out.set("from", addressText(context.caller()));
        report(context, out);
        return context.done();
      }
    }
    for (Kind<?> kind : KINDS) {
      if (message.is(kind.type)) {
        ObjectNode out = Json.object().put("op", "recv").put("kind", kind.name);
        out.set("value", kind.received(message));
        out.set("from", addressText(context.caller()));
        report(context, out);
        context
            .caller()
            .ifPresent(
                caller ->
                    context.send(
                        MessageBuilder.forAddress(caller).withValue("ack:" + kind.name).build()));
        return context.done();
      }
    }
    throw new IllegalArgumentException("unexpected message type " + message.valueTypeName());
  }

  private static void onCommand(Context context, JsonNode cmd) {
    String op = cmd.get("op").textValue();
    ObjectNode out = Json.object().put("op", op);
    out.set("n", cmd.path("n"));
    AddressScopedStorage storage = context.storage();
    switch (op) {
      case "set":
        for (Kind<?> kind : KINDS) {
          kind.store(storage, cmd.get("values").get(kind.name));
        }
        break;
      case "get":
        ObjectNode values = out.putObject("values");
        for (Kind<?> kind : KINDS) {
          values.set(kind.name, kind.stored(storage));
        }
        break;
      case "clear":
        for (Kind<?> kind : KINDS) {
          storage.remove(kind.state);
        }
        break;
      case "ttl-set":
        storage.set(TTL_WRITE, 1);
        storage.set(TTL_CALL, 1);
        break;
      case "ttl-get":
        out.set("write", storage.get(TTL_WRITE).<JsonNode>map(NODES::numberNode).orElse(NullNode.getInstance()));
        out.set("call", storage.get(TTL_CALL).<JsonNode>map(NODES::numberNode).orElse(NullNode.getInstance()));
        break;
      case "delay":
        {
          Message fired =
              MessageBuilder.forAddress(context.self())
                  .withValue("fired:" + cmd.get("tag").textValue())
                  .build();
          Duration delay = Duration.ofMillis(cmd.get("ms").longValue());
          if (cmd.hasNonNull("token")) {
            context.sendAfter(delay, cmd.get("token").textValue(), fired);
          } else {
            context.sendAfter(delay, fired);
          }
          break;
        }
      case "cancel":
        context.cancelDelayedMessage(cmd.get("token").textValue());
        break;
      case "send":
        {
          Address target =
              new Address(
                  TypeName.typeNameFromString(cmd.get("to").textValue()), cmd.get("id").textValue());
          context.send(kind(cmd.get("kind").textValue()).message(target, cmd.get("value")));
          break;
        }
      default:
        throw new IllegalArgumentException("unknown op " + op);
    }
    report(context, out);
  }

  static CompletableFuture<Void> person(Context context, Message message) {
    JsonNode login = message.as(LOGIN);
    int seen = context.storage().get(SEEN).orElse(0) + 1;
    context.storage().set(SEEN, seen);
    ObjectNode visit = Json.object().put("name", login.get("name").textValue()).put("visits", seen);
    context.send(
        MessageBuilder.forAddress(GREETER, context.self().id())
            .withCustomType(VISIT, visit)
            .build());
    return context.done();
  }

  static CompletableFuture<Void> greeter(Context context, Message message) {
    JsonNode visit = message.as(VISIT);
    String name = visit.get("name").textValue();
    int visits = visit.get("visits").intValue();
    String greeting =
        visits == 1 ? "Hello " + name + "! Welcome." : "Hello " + name + "! Visit #" + visits + ".";
    context.send(
        KafkaEgressMessage.forEgress(OUT)
            .withTopic(env("CONFORMANCE_GREETINGS_TOPIC"))
            .withUtf8Key(name)
            .withUtf8Value(greeting)
            .build());
    return context.done();
  }
}
