-- ecommerce_db.transactions: the processed transactions the transformer writes as Parquet.
-- Columns and types are docs/contract.md's processed table. year/month/day exist only in the S3 key
-- (processed/transactions/year=2026/month=11/day=25/...), never in the files.
-- Partition projection computes the partitions from the key template, so a new day's data is
-- queryable as soon as it lands: no crawler, no MSCK REPAIR TABLE, no ALTER TABLE ADD PARTITION.
-- Bucket: s3://{{BUCKET}}/ (two places below); `make console-files BUCKET=...` fills it in (docs/console-guide.md).
CREATE EXTERNAL TABLE IF NOT EXISTS ecommerce_db.transactions (
  transaction_id string,
  `timestamp` timestamp,
  customer_id string,
  product_id string,
  product_name string,
  category string,
  quantity int,
  price decimal(10,2),
  total_amount decimal(10,2),
  hour int,
  day_of_week int
)
PARTITIONED BY (year int, month int, day int)
STORED AS PARQUET
LOCATION 's3://{{BUCKET}}/processed/transactions/'
TBLPROPERTIES (
  'parquet.compression' = 'SNAPPY',
  'projection.enabled' = 'true',
  'projection.year.type' = 'integer',
  'projection.year.range' = '2020,2040',
  'projection.month.type' = 'integer',
  'projection.month.range' = '1,12',
  'projection.month.digits' = '2',
  'projection.day.type' = 'integer',
  'projection.day.range' = '1,31',
  'projection.day.digits' = '2',
  'storage.location.template' = 's3://{{BUCKET}}/processed/transactions/year=${year}/month=${month}/day=${day}'
)
