-- Question: which ten products sell the most units, and their revenue (USD)?
SELECT
  product_id,
  product_name,
  category,
  SUM(quantity) AS units,
  SUM(total_amount) AS revenue,
  COUNT(*) AS orders
FROM ecommerce_db.transactions
GROUP BY product_id, product_name, category
ORDER BY units DESC, product_id
LIMIT 10
