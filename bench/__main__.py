"""`python -m bench` — the same as `airlock bench`."""

from cli.bench import bench_app

if __name__ == "__main__":
    bench_app(prog_name="bench")
