-- Creates the Glue Data Catalog database that holds the pipeline's three tables.
-- Run the files of sql/ddl/ in order, once, in the Athena console (or with tools/run_athena.py).
CREATE DATABASE IF NOT EXISTS ecommerce_db
COMMENT 'Serverless e-commerce pipeline: processed transactions, raw input and quarantined records'
