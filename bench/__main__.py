"""`python -m bench` — the same as `airlock bench`."""

from cli.bench import bench_app

bench_app(prog_name="bench")
