package keyflow.conformance;

import com.fasterxml.jackson.annotation.JsonInclude;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import org.apache.flink.statefun.sdk.java.Address;
import org.apache.flink.statefun.sdk.java.Context;
import org.apache.flink.statefun.sdk.java.StatefulFunctionSpec;
import org.apache.flink.statefun.sdk.java.StatefulFunctions;
import org.apache.flink.statefun.sdk.java.TypeName;
import org.apache.flink.statefun.sdk.java.ValueSpec;
import org.apache.flink.statefun.sdk.java.io.KafkaEgressMessage;
import org.apache.flink.statefun.sdk.java.message.Message;
import org.apache.flink.statefun.sdk.java.message.MessageBuilder;
import org.apache.flink.statefun.sdk.java.types.Type;

/**
 * The shopping cart of APPS.md section 1, ported from functions/shopping-cart (Rust) to the
 * official StateFun Java SDK with the same messages, state and egresses (see that crate's
 * README): {@code com.example/stock} per item and {@code com.example/user-shopping-cart} per user.
 */
final class ShoppingCart {
  static final TypeName STOCK = TypeName.typeNameOf("com.example", "stock");
  static final TypeName USER_SHOPPING_CART =
      TypeName.typeNameOf("com.example", "user-shopping-cart");
  static final TypeName RECEIPTS = TypeName.typeNameOf("com.example", "receipts");
  static final String RECEIPTS_TOPIC = "receipts";
  static final TypeName CART_EVENTS = TypeName.typeNameOf("com.example", "cart-events");
  static final String CART_EVENTS_TOPIC = "cart-events";

  static final Type<JsonNode> ADD_TO_CART = Json.tree("com.example/AddToCart");
  static final Type<JsonNode> CLEAR_CART = Json.tree("com.example/ClearCart");
  static final Type<JsonNode> CHECKOUT = Json.tree("com.example/Checkout");
  static final Type<JsonNode> RESTOCK_ITEM = Json.tree("com.example/RestockItem");
  static final Type<JsonNode> REQUEST_ITEM = Json.tree("com.example/RequestItem");
  static final Type<JsonNode> ITEM_AVAILABILITY = Json.tree("com.example/ItemAvailability");

  static final ValueSpec<Integer> UNITS = ValueSpec.named("stock").withIntType();
  static final ValueSpec<Basket> BASKET =
      ValueSpec.named("basket").withCustomType(Json.of("com.example/Basket", Basket.class));
  static final ValueSpec<Pending> PENDING =
      ValueSpec.named("pending")
          .withCustomType(Json.of("com.example/PendingRequests", Pending.class));

  /** Item id to units, sorted so that receipts list items deterministically. */
  public static final class Basket {
    public TreeMap<String, Integer> basket = new TreeMap<>();

    Basket copy() {
      Basket b = new Basket();
      b.basket = new TreeMap<>(basket);
      return b;
    }

    @Override
    public boolean equals(Object o) {
      return o instanceof Basket && ((Basket) o).basket.equals(basket);
    }

    @Override
    public int hashCode() {
      return basket.hashCode();
    }
  }

  /** Stock answers still to come per item, and the commands that wait for them. */
  public static final class Pending {
    public TreeMap<String, Integer> awaiting = new TreeMap<>();
    public ArrayDeque<Command> deferred = new ArrayDeque<>();

    boolean isEmpty() {
      return awaiting.isEmpty() && deferred.isEmpty();
    }

    Pending copy() {
      Pending p = new Pending();
      p.awaiting = new TreeMap<>(awaiting);
      p.deferred = new ArrayDeque<>(deferred);
      return p;
    }

    @Override
    public boolean equals(Object o) {
      if (!(o instanceof Pending)) {
        return false;
      }
      Pending other = (Pending) o;
      return awaiting.equals(other.awaiting)
          && new ArrayList<>(deferred).equals(new ArrayList<>(other.deferred));
    }

    @Override
    public int hashCode() {
      return awaiting.hashCode();
    }
  }

  /** A cart command: {@code AddToCart} (with item and quantity), {@code ClearCart}, {@code Checkout}. */
  @JsonInclude(JsonInclude.Include.NON_NULL)
  public static final class Command {
    public String command;
    public String itemId;
    public Integer quantity;

    static Command of(String command, String itemId, Integer quantity) {
      Command c = new Command();
      c.command = command;
      c.itemId = itemId;
      c.quantity = quantity;
      return c;
    }

    boolean isAddToCart() {
      return "AddToCart".equals(command);
    }

    @Override
    public boolean equals(Object o) {
      if (!(o instanceof Command)) {
        return false;
      }
      Command c = (Command) o;
      return Objects.equals(command, c.command)
          && Objects.equals(itemId, c.itemId)
          && Objects.equals(quantity, c.quantity);
    }

    @Override
    public int hashCode() {
      return Objects.hash(command, itemId, quantity);
    }
  }

  private ShoppingCart() {}

  static void register(StatefulFunctions functions) {
    functions.withStatefulFunction(
        StatefulFunctionSpec.builder(STOCK)
            .withValueSpec(UNITS)
            .withSupplier(() -> ShoppingCart::stock));
    functions.withStatefulFunction(
        StatefulFunctionSpec.builder(USER_SHOPPING_CART)
            .withValueSpecs(BASKET, PENDING)
            .withSupplier(() -> ShoppingCart::cart));
  }

  // ---- com.example/stock ----------------------------------------------------------------------

  static CompletableFuture<Void> stock(Context context, Message message) {
    int units = context.storage().get(UNITS).orElse(0);
    if (message.is(RESTOCK_ITEM)) {
      int quantity = nonNegative(message.as(RESTOCK_ITEM), "RestockItem");
      int total;
      try {
        total = Math.addExact(units, quantity);
      } catch (ArithmeticException e) {
        throw new IllegalArgumentException(
            "restocking " + quantity + " units onto " + units + " overflows the stock");
      }
      context.storage().set(UNITS, total);
    } else if (message.is(REQUEST_ITEM)) {
      int quantity = nonNegative(message.as(REQUEST_ITEM), "RequestItem");
      String status;
      if (quantity <= units) {
        context.storage().set(UNITS, units - quantity);
        status = "INSTOCK";
      } else {
        status = "OUTOFSTOCK";
      }
      Address caller =
          context
              .caller()
              .orElseThrow(() -> new IllegalArgumentException("a RequestItem needs a caller"));
      ObjectNode answer = Json.object().put("status", status).put("quantity", quantity);
      context.send(
          MessageBuilder.forAddress(caller).withCustomType(ITEM_AVAILABILITY, answer).build());
    } else {
      throw new IllegalArgumentException(
          "com.example/stock does not handle `" + message.valueTypeName().asTypeNameString() + "` messages");
    }
    return context.done();
  }

  private static int nonNegative(JsonNode body, String what) {
    JsonNode quantity = body.get("quantity");
    if (quantity == null || !quantity.canConvertToInt() || quantity.intValue() < 0) {
      throw new IllegalArgumentException(what + " needs a non-negative integer quantity: " + body);
    }
    return quantity.intValue();
  }

  // ---- com.example/user-shopping-cart ---------------------------------------------------------

  static CompletableFuture<Void> cart(Context context, Message message) {
    Basket loadedBasket = context.storage().get(BASKET).orElseGet(Basket::new);
    Pending loadedPending = context.storage().get(PENDING).orElseGet(Pending::new);
    Cart cart =
        new Cart(context, context.self().id(), loadedBasket.copy(), loadedPending.copy());
    if (message.is(ITEM_AVAILABILITY)) {
      Address caller =
          context
              .caller()
              .filter(a -> a.type().equals(STOCK))
              .orElseThrow(
                  () -> new IllegalArgumentException("an ItemAvailability must come from com.example/stock"));
      cart.onAvailability(caller.id(), message.as(ITEM_AVAILABILITY));
    } else {
      cart.submit(parse(message));
    }
    cart.save(loadedBasket, loadedPending);
    return context.done();
  }

  private static Command parse(Message message) {
    if (message.is(ADD_TO_CART)) {
      JsonNode add = message.as(ADD_TO_CART);
      JsonNode quantity = add.get("quantity");
      String itemId = add.path("itemId").textValue();
      if (itemId == null || quantity == null || !quantity.canConvertToInt() || quantity.intValue() < 0) {
        throw new IllegalArgumentException("not an AddToCart: " + add);
      }
      if (quantity.intValue() == 0) {
        throw new IllegalArgumentException(
            "AddToCart of 0 units of `" + itemId + "`: the quantity must be positive");
      }
      return Command.of("AddToCart", itemId, quantity.intValue());
    }
    if (message.is(CLEAR_CART)) {
      message.as(CLEAR_CART);
      return Command.of("ClearCart", null, null);
    }
    if (message.is(CHECKOUT)) {
      message.as(CHECKOUT);
      return Command.of("Checkout", null, null);
    }
    throw new IllegalArgumentException(
        "com.example/user-shopping-cart does not handle `"
            + message.valueTypeName().asTypeNameString()
            + "` messages");
  }

  /** One user's cart during one invocation. */
  private static final class Cart {
    private final Context context;
    private final String userId;
    private final Basket basket;
    private final Pending pending;

    Cart(Context context, String userId, Basket basket, Pending pending) {
      this.context = context;
      this.userId = userId;
      this.basket = basket;
      this.pending = pending;
    }

    void submit(Command command) {
      if (!pending.deferred.isEmpty() || mustWait(command)) {
        pending.deferred.addLast(command);
      } else {
        run(command);
      }
    }

    /** ClearCart and Checkout wait for the stock answers of items added before them. */
    boolean mustWait(Command command) {
      return !pending.awaiting.isEmpty() && !command.isAddToCart();
    }

    void onAvailability(String itemId, JsonNode answer) {
      Integer outstanding = pending.awaiting.get(itemId);
      if (outstanding != null && outstanding > 1) {
        pending.awaiting.put(itemId, outstanding - 1);
      } else if (outstanding != null) {
        pending.awaiting.remove(itemId);
      } else {
        System.err.println(
            "user " + userId + ": stock answer for " + itemId + " without a pending request");
      }
      String status = answer.path("status").textValue();
      int quantity = answer.path("quantity").intValue();
      if ("INSTOCK".equals(status)) {
        basket.basket.merge(itemId, quantity, Math::addExact);
      } else if ("OUTOFSTOCK".equals(status)) {
        ObjectNode event =
            Json.object()
                .put("userId", userId)
                .put("itemId", itemId)
                .put("status", status)
                .put("quantity", quantity);
        context.send(
            KafkaEgressMessage.forEgress(CART_EVENTS)
                .withTopic(CART_EVENTS_TOPIC)
                .withUtf8Key(userId)
                .withUtf8Value(Json.text(event))
                .build());
      } else {
        throw new IllegalArgumentException("unknown availability " + answer);
      }
      while (!pending.deferred.isEmpty()) {
        Command next = pending.deferred.peekFirst();
        if (mustWait(next)) {
          break;
        }
        pending.deferred.removeFirst();
        run(next);
      }
    }

    void run(Command command) {
      switch (command.command) {
        case "AddToCart":
          {
            ObjectNode request = Json.object().put("quantity", command.quantity);
            context.send(
                MessageBuilder.forAddress(STOCK, command.itemId)
                    .withCustomType(REQUEST_ITEM, request)
                    .build());
            pending.awaiting.merge(command.itemId, 1, Integer::sum);
            break;
          }
        case "ClearCart":
          for (Map.Entry<String, Integer> item : basket.basket.entrySet()) {
            ObjectNode restock =
                Json.object().put("itemId", item.getKey()).put("quantity", item.getValue());
            context.send(
                MessageBuilder.forAddress(STOCK, item.getKey())
                    .withCustomType(RESTOCK_ITEM, restock)
                    .build());
          }
          basket.basket.clear();
          break;
        case "Checkout":
          if (basket.basket.isEmpty()) {
            break;
          }
          List<String> lines = new ArrayList<>();
          basket.basket.forEach((item, units) -> lines.add(item + ": " + units));
          basket.basket.clear();
          ObjectNode receipt =
              Json.object().put("userId", userId).put("details", String.join("\n", lines));
          context.send(
              KafkaEgressMessage.forEgress(RECEIPTS)
                  .withTopic(RECEIPTS_TOPIC)
                  .withUtf8Key(userId)
                  .withUtf8Value(Json.text(receipt))
                  .build());
          break;
        default:
          throw new IllegalStateException("unknown deferred command " + command.command);
      }
    }

    /** Writes the cells that changed; an empty cell is removed rather than stored empty. */
    void save(Basket loadedBasket, Pending loadedPending) {
      if (!basket.equals(loadedBasket)) {
        if (basket.basket.isEmpty()) {
          context.storage().remove(BASKET);
        } else {
          context.storage().set(BASKET, basket);
        }
      }
      if (!pending.equals(loadedPending)) {
        if (pending.isEmpty()) {
          context.storage().remove(PENDING);
        } else {
          context.storage().set(PENDING, pending);
        }
      }
    }
  }
}
