"""Tools around the commands: throughput benchmarks (bench.py), learning curves of runs
(curves.py) and sweep tables (summarize.py), each run as `python -m ddpm_lightning.tools.NAME`."""
