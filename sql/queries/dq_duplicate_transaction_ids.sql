-- Question (data quality): which transaction ids appear in more than one processed row?
-- The transformer quarantines duplicates within one file, so every row here is a duplicate across
-- files: the same transaction sent twice, or a file re-sent under a new name.
SELECT
  transaction_id,
  COUNT(*) AS copies,
  COUNT(DISTINCT "$path") AS files,
  MIN("timestamp") AS first_timestamp,
  MAX("timestamp") AS last_timestamp
FROM ecommerce_db.transactions
GROUP BY transaction_id
HAVING COUNT(*) > 1
ORDER BY copies DESC, transaction_id
