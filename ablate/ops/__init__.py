"""Operations tools, not library code: they bring up the services a cluster run talks to, for tests,
benchmarks and a first try on one machine. Nothing in the library imports them.

- local_slurm: a single-node SLURM cluster on 127.0.0.1 (`python -m ablate.ops.local_slurm up|down|status`).
- tracking_server: PostgreSQL + `mlflow server` for many jobs (`python -m ablate.ops.tracking_server up|down`).
"""
