"""Reproducible throughput, latency and memory benchmark (`airlock bench`, `python -m bench`)."""
