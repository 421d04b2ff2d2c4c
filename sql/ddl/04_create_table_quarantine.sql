-- ecommerce_db.quarantine: records the transformer rejected, one JSON line each, with the reason.
-- `record` is the original raw line as text; `line` is its 1-based line number in `source_key`.
-- Bucket: s3://{{BUCKET}}/ (two places below); `make console-files BUCKET=...` fills it in (docs/console-guide.md).
CREATE EXTERNAL TABLE IF NOT EXISTS ecommerce_db.quarantine (
  source_key string,
  line int,
  reason string,
  detail string,
  record string
)
PARTITIONED BY (year int, month int, day int)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://{{BUCKET}}/quarantine/'
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
  'storage.location.template' = 's3://{{BUCKET}}/quarantine/year=${year}/month=${month}/day=${day}'
)
