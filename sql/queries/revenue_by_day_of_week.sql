-- Question: which days of the week bring the most orders and revenue (USD)? (day_of_week 0 = Monday)
SELECT
  day_of_week,
  CASE day_of_week
    WHEN 0 THEN 'Monday'
    WHEN 1 THEN 'Tuesday'
    WHEN 2 THEN 'Wednesday'
    WHEN 3 THEN 'Thursday'
    WHEN 4 THEN 'Friday'
    WHEN 5 THEN 'Saturday'
    WHEN 6 THEN 'Sunday'
  END AS day_name,
  COUNT(*) AS orders,
  SUM(total_amount) AS revenue
FROM ecommerce_db.transactions
GROUP BY day_of_week
ORDER BY day_of_week
