"""What a SLURM task runs: one stage job, checkpointed and requeued when SLURM signals it.

SLURM sends USR2 `cluster.signal_delay_s` before the time limit, and on preemption (with
`SlurmctldParameters=preempt_send_user_signal`). submitit's own handler for USR2 checkpoints the
submission and requeues the job at once, which could cut a training step in half. Here the signal only
raises a flag: the training loop finishes its step, writes its checkpoint and stops (StopRequested), and
only then is submitit's handler called to requeue (`scontrol requeue`) and exit. The requeued task runs
`StageJob.checkpoint`'s resubmission of the same Job, so it resumes from that checkpoint into the same
MLflow run. Stages that do not poll the flag (data, tokenizers, evaluate) are requeued at once and
restart from the beginning: they are minutes long and write their outputs atomically.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import submitit

from ablate.errors import StopRequested
from ablate.stages import registry
from ablate.stages.job import Job


class _Preemption:
    """USR2 -> a flag the stage polls; `requeue()` then hands over to submitit's handler."""

    def __init__(self, stage: str, rank: int) -> None:
        self.stage, self.rank = stage, rank
        self.signalled = False
        self._submitit_handler: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        sig = submitit.JobEnvironment._usr_sig()
        self._submitit_handler = signal.getsignal(sig)
        signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = True
        if not registry.get(self.stage).checkpoints:  # nothing to wait for: requeue at once
            self.requeue(signum)

    def __call__(self) -> bool:
        return self.signalled

    def requeue(self, signum: int | None = None) -> None:
        """Rank 0: submitit checkpoints the submission, requeues the job and exits; other ranks wait."""
        signum = signum or submitit.JobEnvironment._usr_sig()
        if self.rank == 0 and callable(self._submitit_handler):
            self._submitit_handler(signum, None)  # exits (sys.exit) once the job is requeued
        # Other ranks exit with the job when SLURM requeues it; exiting first could fail the job step.
        time.sleep(600)


class StageJob(submitit.helpers.Checkpointable):
    """The callable each array task runs: the stage job, with torch.distributed's env and requeue."""

    def __call__(self, job: Job) -> str:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for torch.distributed (env://).
            # All of a node's GPUs stay visible: the trainer picks cuda:LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from ablate.stages.runner import run_job  # torch: in the job's process, not the launcher's

        preemption = _Preemption(job.stage, env.global_rank)
        preemption.install()
        try:
            result = run_job(job, extra_stop=preemption)
            # Done: a time-limit signal from now on has nothing left to save (SLURM's timer is coarse, so
            # it can come after the work). Ignored, it cannot kill the process while Python shuts down
            # (which restores the default action), and SLURM then reports the job COMPLETED, not FAILED.
            if threading.current_thread() is threading.main_thread():
                signal.signal(submitit.JobEnvironment._usr_sig(), signal.SIG_IGN)
            return result
        except StopRequested:
            if preemption.signalled:
                preemption.requeue()
            # A SIGTERM alone (scancel, or the SIGTERM that precedes a preemption's USR2): give USR2 a
            # moment to arrive, so a preemption is requeued rather than failed.
            for _ in range(50):
                time.sleep(0.1)
                if preemption.signalled:
                    preemption.requeue()
            raise
