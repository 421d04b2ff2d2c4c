-- Question: what does an average order (basket) look like (value in USD, units), and what share of
-- customers come back?
-- A repeat customer has more than one order in the data queried.
WITH per_customer AS (
  SELECT customer_id, COUNT(*) AS orders
  FROM ecommerce_db.transactions
  GROUP BY customer_id
)
SELECT
  (SELECT COUNT(*) FROM ecommerce_db.transactions) AS orders,
  (SELECT ROUND(AVG(total_amount), 2) FROM ecommerce_db.transactions) AS avg_basket_value,
  (SELECT ROUND(AVG(CAST(quantity AS DOUBLE)), 2) FROM ecommerce_db.transactions) AS avg_units_per_order,
  COUNT(*) AS customers,
  COUNT_IF(orders > 1) AS repeat_customers,
  ROUND(CAST(COUNT_IF(orders > 1) AS DOUBLE) / COUNT(*), 4) AS repeat_customer_rate
FROM per_customer
