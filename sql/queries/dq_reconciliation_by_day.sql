-- Question (data quality): for each day of raw input, is every raw record accounted for?
-- raw records = processed rows + quarantined records, per day of the raw files' partition (the run's
-- date; after midnight a file's rows sit in the next day's processed partition, and are still counted
-- here). Processed rows are matched to raw lines by transaction_id, each raw line to at most one row,
-- so the check also holds after the compactor has merged a day's files into one.
-- unprocessed_files counts raw files with no output at all: the transformer never finished them.
WITH raw_lines AS (
  SELECT
    year,
    month,
    day,
    transaction_id,
    regexp_extract("$path", '^s3://[^/]+/(.*)$', 1) AS raw_key
  FROM ecommerce_db.raw_transactions
),
processed_ids AS (
  SELECT transaction_id, COUNT(*) AS copies
  FROM ecommerce_db.transactions
  GROUP BY transaction_id
),
matched AS (
  SELECT
    r.year,
    r.month,
    r.day,
    r.transaction_id,
    COUNT(*) AS raw_lines,
    MAX(COALESCE(p.copies, 0)) AS processed_copies
  FROM raw_lines AS r
  LEFT JOIN processed_ids AS p ON p.transaction_id = r.transaction_id
  WHERE r.transaction_id IS NOT NULL
  GROUP BY r.year, r.month, r.day, r.transaction_id
),
files_with_output AS (
  SELECT DISTINCT r.raw_key
  FROM raw_lines AS r
  INNER JOIN processed_ids AS p ON p.transaction_id = r.transaction_id
  UNION
  SELECT DISTINCT source_key AS raw_key
  FROM ecommerce_db.quarantine
),
raw_per_day AS (
  SELECT
    r.year,
    r.month,
    r.day,
    COUNT(DISTINCT r.raw_key) AS raw_files,
    COUNT(*) AS raw_records,
    COUNT(DISTINCT CASE WHEN f.raw_key IS NULL THEN r.raw_key END) AS unprocessed_files
  FROM raw_lines AS r
  LEFT JOIN files_with_output AS f ON f.raw_key = r.raw_key
  GROUP BY r.year, r.month, r.day
),
processed_per_day AS (
  SELECT year, month, day, SUM(LEAST(raw_lines, processed_copies)) AS processed_rows
  FROM matched
  GROUP BY year, month, day
),
quarantined_per_day AS (
  SELECT year, month, day, COUNT(*) AS quarantined_records
  FROM ecommerce_db.quarantine
  GROUP BY year, month, day
)
SELECT
  r.year,
  r.month,
  r.day,
  r.raw_files,
  r.raw_records,
  COALESCE(p.processed_rows, 0) AS processed_rows,
  COALESCE(q.quarantined_records, 0) AS quarantined_records,
  r.raw_records - COALESCE(p.processed_rows, 0) - COALESCE(q.quarantined_records, 0) AS difference,
  r.unprocessed_files,
  CASE
    WHEN r.raw_records = COALESCE(p.processed_rows, 0) + COALESCE(q.quarantined_records, 0) THEN 'OK'
    ELSE 'MISMATCH'
  END AS status
FROM raw_per_day AS r
LEFT JOIN processed_per_day AS p ON p.year = r.year AND p.month = r.month AND p.day = r.day
LEFT JOIN quarantined_per_day AS q ON q.year = r.year AND q.month = r.month AND q.day = r.day
ORDER BY r.year, r.month, r.day
