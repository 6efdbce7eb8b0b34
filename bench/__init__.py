"""Reproducible throughput, latency and memory benchmark (`airlock bench`, `python -m bench`)."""

# PostgreSQL last: its checkpoint and autovacuum after 20,000 activations would
# otherwise run beside the next scenario.
SCENARIOS = ("baseline", "embedded", "backlog", "latency", "activation", "distributed", "bulk",
             "portal", "activation-postgres")
