-- Question: at which hours of the day (UTC) do customers buy: orders and revenue (USD) per hour of day?
SELECT
  hour,
  COUNT(*) AS orders,
  SUM(total_amount) AS revenue
FROM ecommerce_db.transactions
GROUP BY hour
ORDER BY hour
