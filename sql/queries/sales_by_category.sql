-- Question: how much does each product category sell: number of transactions, total sales and the
-- average order value (USD)?
SELECT
  category,
  COUNT(*) AS transaction_count,
  SUM(total_amount) AS total_sales,
  ROUND(AVG(total_amount), 2) AS avg_order
FROM ecommerce_db.transactions
GROUP BY category
ORDER BY total_sales DESC, category
