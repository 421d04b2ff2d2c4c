-- Question: which ten products bring the most revenue (USD)?
SELECT
  product_id,
  product_name,
  category,
  SUM(total_amount) AS revenue,
  SUM(quantity) AS units,
  COUNT(*) AS orders
FROM ecommerce_db.transactions
GROUP BY product_id, product_name, category
ORDER BY revenue DESC, product_id
LIMIT 10
