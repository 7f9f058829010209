// The shopping-cart flow of keyflow's benchmark as Restate virtual objects: `cart` (key: user)
// and `stock` (key: item). AddToCart asks the item's stock for the units (one call, like
// keyflow's RequestItem -> ItemAvailability round), then updates the basket; Checkout answers
// the receipt and empties the basket. Usage: node service.mjs <port>
if (!Promise.withResolvers) {
  // Node 20: the SDK needs Promise.withResolvers (Node 22+).
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
const restate = await import("@restatedev/restate-sdk");

const stock = restate.object({
  name: "stock",
  handlers: {
    restock: async (ctx, quantity) => {
      const n = (await ctx.get("stock")) ?? 0;
      ctx.set("stock", n + quantity);
    },
    requestItem: async (ctx, quantity) => {
      const n = (await ctx.get("stock")) ?? 0;
      if (n >= quantity) {
        ctx.set("stock", n - quantity);
        return { status: "IN_STOCK", quantity };
      }
      return { status: "OUT_OF_STOCK", quantity };
    },
  },
});

const cart = restate.object({
  name: "cart",
  handlers: {
    addToCart: async (ctx, add) => {
      const answer = await ctx.objectClient({ name: "stock" }, add.itemId).requestItem(add.quantity);
      if (answer.status !== "IN_STOCK") return false;
      const basket = (await ctx.get("basket")) ?? {};
      basket[add.itemId] = (basket[add.itemId] ?? 0) + add.quantity;
      ctx.set("basket", basket);
      return true;
    },
    checkout: async (ctx) => {
      const basket = (await ctx.get("basket")) ?? {};
      ctx.clear("basket");
      return { userId: ctx.key, basket };
    },
  },
});

const port = Number(process.argv[2] ?? 9080);
restate.endpoint().bind(stock).bind(cart).listen(port);
