#!/usr/bin/env bash
# Seeds the store's products through the HTTP ingress: one ecommerce/SetProduct per product
# (available quantity and price in cents), with request-reply, printing each product's
# ecommerce/ProductInfo answer. Safe to run again: it sets the numbers, it does not add.
#
#   apps/ecommerce/seed-products.sh            seeds the catalog below
#
# Environment (defaults): INGRESS=127.0.0.1:8180 (a worker's HTTP ingress), SUFFIX="" (appended
# to every product id, so a test run can have products of its own).
set -euo pipefail

INGRESS="${INGRESS:-127.0.0.1:8180}"
SUFFIX="${SUFFIX:-}"

# id quantity price-in-cents
CATALOG=(
  "cactus-tshirt 3 1325"
  "black-tshirt 10 1490"
  "sunset-hoodie 5 3999"
  "canvas-cap 20 1200"
  "wool-socks 50 650"
)

command -v curl >/dev/null || { echo "curl is needed (apt-get install curl)" >&2; exit 1; }
for entry in "${CATALOG[@]}"; do
  read -r id quantity price <<<"$entry"
  if ! answer="$(curl -sS -f -m 30 -X POST -H 'Content-Type: application/vnd.ecommerce/SetProduct' \
    -d "{\"quantity\":$quantity,\"priceCents\":$price}" \
    "http://$INGRESS/ecommerce/Product/$id$SUFFIX?reply=true")"; then
    echo "seeding $id$SUFFIX through http://$INGRESS failed (is the stack running? playthrough/app.sh ecommerce start)" >&2
    exit 1
  fi
  echo "$answer"
done
