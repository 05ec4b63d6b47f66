"""Tools around the commands: throughput benchmarks (bench.py), learning curves of runs
(curves.py), sweep tables (summarize.py) and rounds of progressive distillation
(distill_rounds.py), each run as `python -m ddpm_lightning.tools.NAME`."""
