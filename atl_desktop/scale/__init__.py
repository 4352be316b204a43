"""Scale beyond one process: torch.distributed scoring and training, torchrun launches,
and bundles for running a project's jobs on a cluster.

- `context`: who am I (rank, world size, device) and the few collectives the jobs use.
- `scoring`: the scoring pass sharded over ranks, merged by rank 0 into the score cache.
- `worker`: the code every rank runs (`python -m atl_desktop.scale.worker RUN_DIR`).
- `launch`: starts torchrun as a job (a generator of Progress) and records the outcome.
- `bundle`: `atl pack` / `atl unpack-results`.
"""
