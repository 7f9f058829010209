//! `ecommerce/InventoryRestock`, keyed by product id: the supplier stub. An
//! `ecommerce/OrderProduct` (the product's delayed order of its last unit) arrives as a
//! `ecommerce/Restock` of the same quantity at the product. No state.

use keyflow_sdk::{Context, Error, FunctionSpec, Message};

use crate::messages::{Restock, INVENTORY_RESTOCK, ORDER_PRODUCT, PRODUCT, RESTOCK};
use crate::{reject, unknown};

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(INVENTORY_RESTOCK)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    if !msg.is(&ORDER_PRODUCT) {
        return unknown(ctx, &msg, &[ORDER_PRODUCT.typename()]);
    }
    let quantity = match msg.get(&ORDER_PRODUCT) {
        Ok(order) => order.quantity,
        Err(e) => return reject(ctx, e.to_string()),
    };
    let product = ctx.self_address().id.clone();
    tracing::info!(%product, quantity, "units ordered from the supplier (stub): delivered");
    ctx.send(
        PRODUCT.address(product),
        Message::of(&RESTOCK, &Restock { quantity })?,
    );
    Ok(())
}
