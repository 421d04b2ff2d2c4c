-- Question (data quality): how many records were quarantined, for which reason, from how many files?
SELECT
  reason,
  COUNT(*) AS records,
  COUNT(DISTINCT source_key) AS files
FROM ecommerce_db.quarantine
GROUP BY reason
ORDER BY records DESC, reason
