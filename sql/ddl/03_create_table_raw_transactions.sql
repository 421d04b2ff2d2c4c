-- ecommerce_db.raw_transactions: the generator's JSON Lines files under raw/, as they arrived.
-- Raw input is untrusted, so every column is a string: a bad value shows up as written instead of
-- failing the query, and with ignore.malformed.json a line that is not a JSON object still counts as
-- one row (of NULLs). That is what reconciliation needs: one row per raw line.
-- Bucket: s3://{{BUCKET}}/ (two places below); `make console-files BUCKET=...` fills it in (docs/console-guide.md).
CREATE EXTERNAL TABLE IF NOT EXISTS ecommerce_db.raw_transactions (
  transaction_id string,
  `timestamp` string,
  customer_id string,
  product_id string,
  product_name string,
  category string,
  quantity string,
  price string,
  total_amount string
)
PARTITIONED BY (year int, month int, day int)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://{{BUCKET}}/raw/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.year.type' = 'integer',
  'projection.year.range' = '2020,2040',
  'projection.month.type' = 'integer',
  'projection.month.range' = '1,12',
  'projection.month.digits' = '2',
  'projection.day.type' = 'integer',
  'projection.day.range' = '1,31',
  'projection.day.digits' = '2',
  'storage.location.template' = 's3://{{BUCKET}}/raw/year=${year}/month=${month}/day=${day}'
)
