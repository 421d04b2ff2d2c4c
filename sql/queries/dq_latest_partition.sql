-- Question (data quality): which is the newest day partition of processed data, and how far behind
-- now is its newest transaction (lag in minutes)? A lag well above the five-minute schedule means
-- the generator, the trigger or the transformer has stopped.
SELECT
  year,
  month,
  day,
  COUNT(*) AS row_count,
  MAX("timestamp") AS latest_transaction,
  ROUND((to_unixtime(current_timestamp) - to_unixtime(MAX("timestamp"))) / 60.0, 1) AS lag_minutes
FROM ecommerce_db.transactions
GROUP BY year, month, day
ORDER BY year DESC, month DESC, day DESC
LIMIT 1
