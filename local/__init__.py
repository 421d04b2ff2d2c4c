"""The pipeline on one machine: an embedded S3, a simulated schedule and the real handlers (`make demo`)."""
