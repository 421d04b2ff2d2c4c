-- Question: how many orders and how much revenue (USD) does each day (UTC) bring?
SELECT
  year,
  month,
  day,
  COUNT(*) AS orders,
  SUM(total_amount) AS revenue,
  SUM(quantity) AS units
FROM ecommerce_db.transactions
GROUP BY year, month, day
ORDER BY year, month, day
