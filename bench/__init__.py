"""layercache benchmark suite.

Run every scenario (starts its own ``redis-server`` on a free 127.0.0.1 port)::

    .venv/bin/python -m bench                 # full run, ~2-3 minutes
    .venv/bin/python -m bench --quick         # smoke run, seconds
    .venv/bin/python -m bench --json out.json # also write machine-readable results

See ``BENCHMARKS.md`` at the repository root for the methodology and a recorded run.
"""
