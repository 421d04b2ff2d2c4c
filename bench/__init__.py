"""Performance benchmark of the pipeline's Lambdas (`make bench`): throughput, memory, imports, queries."""
