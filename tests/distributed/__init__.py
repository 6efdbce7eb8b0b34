"""Distributed mode against a real Redis server and real Celery worker processes."""
