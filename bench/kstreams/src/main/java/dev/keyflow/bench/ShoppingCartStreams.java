package dev.keyflow.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The shopping cart (shared/APPS.md section 1) as a Kafka Streams application: the same input
 * topics, JSON and egress topics as keyflow's module, the same three hops per AddToCart.
 *
 * <p>Two sub-topologies joined by two topics of the application (created here, 8 partitions
 * like the input topics, deleted with the run): {@code <app>-stock-requests} (key item id) and
 * {@code <app>-stock-answers} (key user id). The cart processor (state store {@code carts},
 * JSON {@code {"basket":{},"awaiting":{},"deferred":[]}}) reads add-to-cart, clear-cart,
 * checkout and the answers; the stock processor (state store {@code stock}) reads restock-items
 * and the requests. Hop 1: AddToCart -> cart -> RequestItem on stock-requests; hop 2: stock ->
 * ItemAvailability on stock-answers; hop 3: cart updates the basket. Each hop is visible to the
 * next only when its transaction commits (exactly_once_v2: consumers read_committed), exactly as
 * keyflow's hops through {@code <cluster>-messages}. Receipts go to {@code receipts} and
 * out-of-stock notices to {@code cart-events}, keyed by user id, in the same transactions.
 *
 * <p>The cart keeps the functions' rules: a checkout or clear that arrives while stock answers
 * are outstanding waits (deferred) for them; a checkout of an empty basket emits nothing.
 */
public final class ShoppingCartStreams {
  static final ObjectMapper JSON = new ObjectMapper();
  static final boolean DEBUG = System.getenv("KSTREAMS_DEBUG") != null;

  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: ShoppingCartStreams <bootstrap> <run-id>  (env: KSTREAMS_THREADS,"
          + " KSTREAMS_COMMIT_MS, KSTREAMS_STATE_DIR, KSTREAMS_PARTITIONS)");
      System.exit(2);
    }
    String bootstrap = args[0];
    String run = args[1];
    String app = "kstreams-" + run;
    int partitions = Integer.parseInt(env("KSTREAMS_PARTITIONS", "8"));
    String requests = app + "-stock-requests";
    String answers = app + "-stock-answers";
    createTopics(bootstrap, partitions, List.of(
        "add-to-cart-" + run, "clear-cart-" + run, "checkout-" + run, "restock-items-" + run,
        requests, answers, "receipts", "cart-events"));

    Topology t = new Topology();
    t.addSource("carts-in", Serdes.String().deserializer(), Serdes.String().deserializer(),
        "add-to-cart-" + run, "clear-cart-" + run, "checkout-" + run, answers);
    t.addProcessor("cart", CartProcessor::new, "carts-in");
    t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore("carts"),
        Serdes.String(), Serdes.String()), "cart");
    t.addSink("to-stock", requests, Serdes.String().serializer(), Serdes.String().serializer(),
        "cart");
    t.addSink("receipts", "receipts", Serdes.String().serializer(),
        Serdes.String().serializer(), "cart");
    t.addSink("cart-events", "cart-events", Serdes.String().serializer(),
        Serdes.String().serializer(), "cart");

    t.addSource("stock-in", Serdes.String().deserializer(), Serdes.String().deserializer(),
        "restock-items-" + run, requests);
    t.addProcessor("stock", StockProcessor::new, "stock-in");
    t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore("stock"),
        Serdes.String(), Serdes.String()), "stock");
    t.addSink("to-carts", answers, Serdes.String().serializer(), Serdes.String().serializer(),
        "stock");

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, env("KSTREAMS_THREADS", "1"));
    // exactly_once_v2's default commit interval is 100 ms; KSTREAMS_COMMIT_MS overrides it.
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, env("KSTREAMS_COMMIT_MS", "100"));
    p.put(StreamsConfig.STATE_DIR_CONFIG, env("KSTREAMS_STATE_DIR", "/tmp/kstreams-" + run));
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    System.out.println("topology:\n" + t.describe());

    KafkaStreams streams = new KafkaStreams(t, p);
    CountDownLatch done = new CountDownLatch(1);
    streams.setStateListener((now, before) -> {
      System.out.println("state " + before + " -> " + now);
      if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
        done.countDown();
      }
    });
    streams.setUncaughtExceptionHandler(e -> {
      System.err.println("stream thread failed: " + e);
      e.printStackTrace();
      return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
          .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close(java.time.Duration.ofSeconds(20));
      done.countDown();
    }));
    streams.start();
    done.await();
  }

  static String env(String name, String dflt) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? dflt : v;
  }

  static void createTopics(String bootstrap, int partitions, List<String> topics)
      throws Exception {
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    try (Admin admin = Admin.create(p)) {
      for (String topic : topics) {
        try {
          admin.createTopics(List.of(new NewTopic(topic, partitions, (short) -1))).all().get();
        } catch (java.util.concurrent.ExecutionException e) {
          if (!(e.getCause() instanceof TopicExistsException)) {
            throw e;
          }
        }
      }
    }
  }

  static JsonNode parse(String value) {
    try {
      return JSON.readTree(value);
    } catch (Exception e) {
      throw new IllegalArgumentException("not JSON: " + value, e);
    }
  }

  static String write(Object value) {
    try {
      return JSON.writeValueAsString(value);
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }

  /** {@code com.example/user-shopping-cart}, keyed by user id. */
  static final class CartProcessor implements Processor<String, String, String, String> {
    private ProcessorContext<String, String> ctx;
    private KeyValueStore<String, String> carts;

    @Override
    public void init(ProcessorContext<String, String> ctx) {
      this.ctx = ctx;
      this.carts = ctx.getStateStore("carts");
    }

    @Override
    public void process(Record<String, String> r) {
      String user = r.key();
      String topic = ctx.recordMetadata().map(m -> m.topic()).orElse("");
      String stored = carts.get(user);
      ObjectNode cart = stored == null ? JSON.createObjectNode() : (ObjectNode) parse(stored);
      ObjectNode basket = cart.with("basket");
      ObjectNode awaiting = cart.with("awaiting");
      ArrayNode deferred = cart.withArray("deferred");
      JsonNode msg = parse(r.value());
      if (DEBUG) {
        System.out.println("cart " + user + " <- " + topic + " " + r.value() + " state " + stored);
      }
      if (topic.endsWith("-stock-answers")) {
        String item = msg.get("itemId").asText();
        int left = awaiting.path(item).asInt(0) - 1;
        if (left > 0) {
          awaiting.put(item, left);
        } else {
          awaiting.remove(item);
        }
        long qty = msg.get("quantity").asLong();
        if ("INSTOCK".equals(msg.get("status").asText())) {
          basket.put(item, basket.path(item).asLong(0) + qty);
        } else {
          ObjectNode event = JSON.createObjectNode();
          event.put("userId", user);
          event.put("itemId", item);
          event.put("status", "OUTOFSTOCK");
          event.put("quantity", qty);
          ctx.forward(r.withValue(write(event)).withTimestamp(System.currentTimeMillis()),
              "cart-events");
        }
        while (deferred.size() > 0 && awaiting.isEmpty()) {
          JsonNode cmd = deferred.remove(0);
          run(r, user, cmd.get("kind").asText(), cmd, basket, awaiting);
        }
      } else {
        String kind = topic.startsWith("add-to-cart-") ? "add"
            : topic.startsWith("checkout-") ? "checkout" : "clear";
        boolean mustWait = !kind.equals("add") && !awaiting.isEmpty();
        if (deferred.size() > 0 || mustWait) {
          ObjectNode cmd = msg.deepCopy();
          cmd.put("kind", kind);
          deferred.add(cmd);
        } else {
          run(r, user, kind, msg, basket, awaiting);
        }
      }
      if (basket.isEmpty() && awaiting.isEmpty() && deferred.isEmpty()) {
        carts.delete(user);
      } else {
        carts.put(user, write(cart));
      }
    }

    private void run(Record<String, String> r, String user, String kind, JsonNode msg,
        ObjectNode basket, ObjectNode awaiting) {
      switch (kind) {
        case "add" -> {
          String item = msg.get("itemId").asText();
          ObjectNode req = JSON.createObjectNode();
          req.put("type", "RequestItem");
          req.put("userId", user);
          req.put("quantity", msg.get("quantity").asLong());
          ctx.forward(new Record<>(item, write(req), r.timestamp()), "to-stock");
          awaiting.put(item, awaiting.path(item).asInt(0) + 1);
        }
        case "clear" -> {
          Iterator<Map.Entry<String, JsonNode>> it = basket.fields();
          List<String> items = new ArrayList<>();
          while (it.hasNext()) {
            Map.Entry<String, JsonNode> e = it.next();
            ObjectNode restock = JSON.createObjectNode();
            restock.put("type", "RestockItem");
            restock.put("itemId", e.getKey());
            restock.put("quantity", e.getValue().asLong());
            ctx.forward(new Record<>(e.getKey(), write(restock), r.timestamp()), "to-stock");
            items.add(e.getKey());
          }
          basket.removeAll();
        }
        default -> { // checkout
          if (basket.isEmpty()) {
            return;
          }
          TreeMap<String, Long> sorted = new TreeMap<>();
          basket.fields().forEachRemaining(e -> sorted.put(e.getKey(), e.getValue().asLong()));
          StringBuilder details = new StringBuilder();
          sorted.forEach((item, units) -> {
            if (details.length() > 0) {
              details.append('\n');
            }
            details.append(item).append(": ").append(units);
          });
          ObjectNode receipt = JSON.createObjectNode();
          receipt.put("userId", user);
          receipt.put("details", details.toString());
          // Stamped now, as keyflow's receipts are (the driver splits latency at it).
          ctx.forward(new Record<>(user, write(receipt), System.currentTimeMillis()),
              "receipts");
          basket.removeAll();
        }
      }
    }
  }

  /** {@code com.example/stock}, keyed by item id. */
  static final class StockProcessor implements Processor<String, String, String, String> {
    private ProcessorContext<String, String> ctx;
    private KeyValueStore<String, String> stock;

    @Override
    public void init(ProcessorContext<String, String> ctx) {
      this.ctx = ctx;
      this.stock = ctx.getStateStore("stock");
    }

    @Override
    public void process(Record<String, String> r) {
      String item = r.key();
      String stored = stock.get(item);
      long units = stored == null ? 0 : Long.parseLong(stored);
      JsonNode msg = parse(r.value());
      if (!"RequestItem".equals(msg.path("type").asText())) {
        // RestockItem, from restock-items or a cleared cart.
        stock.put(item, Long.toString(units + msg.get("quantity").asLong()));
        return;
      }
      long qty = msg.get("quantity").asLong();
      boolean inStock = units >= qty;
      if (inStock) {
        stock.put(item, Long.toString(units - qty));
      }
      ObjectNode answer = JSON.createObjectNode();
      answer.put("itemId", item);
      answer.put("status", inStock ? "INSTOCK" : "OUTOFSTOCK");
      answer.put("quantity", qty);
      ctx.forward(new Record<>(msg.get("userId").asText(), write(answer), r.timestamp()),
          "to-carts");
    }
  }
}
