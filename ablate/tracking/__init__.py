"""MLflow tracking: the only package that imports mlflow (lazily, so `import ablate.tracking` stays cheap).

Three users: jobs (each finds or creates its runs when it starts, then logs through a Tracker that never
blocks the training step), the launcher (the runs of stages already done) and analysis (fetch_runs /
fetch_histories into pandas frames).

Modules: store (Store: one per process per URI, holding the client, the SQLite file and the creation
lock, with the param/tag/search methods; constants and URI helpers), tags (every tag and experiment name,
the run tag builders), runs (experiments, stage runs, statuses), job_runs (the runs a job logs to: its
stage run and its arms' runs), done_runs (the runs of stages done before a launch), tracker (Tracker,
NullTracker, MLflowTracker) and items (what MLflowTracker queues), results (how an arm run
shows its results), ui (the MLflow UI process) and read (fetch_runs, fetch_histories, download_artifact,
latest_metrics). Functions on the store take a Store or a URI (opening the process's Store for it).
Import from here.
"""

from ablate.tracking.done_runs import sync_done_runs
from ablate.tracking.job_runs import (
    ArmRunSpec,
    JobTracking,
    RunSpec,
    arm_run,
    backfill,
    open_job_tracker,
    stage_run,
    sweep_arm_runs,
    sweep_stage_keys,
)
from ablate.tracking.read import download_artifact, fetch_histories, fetch_runs, latest_metrics
from ablate.tracking.runs import (
    ensure_experiment,
    get_or_create_stage_run,
    run_info,
    set_run_status,
)
from ablate.tracking.store import (
    HISTORY_COLUMNS,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_LEN,
    MAX_PARAMS_PER_BATCH,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    TRACKING_URI_ENV,
    TRUNCATION_MARK,
    Store,
    default_tracking_uri,
    describe_store,
    redact_uri,
)
from ablate.tracking.tags import (
    KIND_ARM,
    TAG_ARM,
    TAG_ARM_KEY,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_PARENT,
    TAG_POSITIONAL,
    TAG_RUN_KEY,
    TAG_STAGE,
    TAG_STAGE_KEY_PREFIX,
    TAG_STAGE_RUN_PREFIX,
    TAG_SWEEP,
    TAG_SWEEPS_PREFIX,
    TAG_TRAIN_KEY,
    TAG_TRAINABLE,
    arm_run_tags,
    stage_run_name,
    stage_run_tags,
    stages_experiment,
    sweep_experiment,
    sweep_tag,
)
from ablate.tracking.tracker import MLflowTracker, NullTracker, Tracker
from ablate.tracking.ui import (
    arms_link,
    arms_view,
    default_workers,
    start_ui,
    sweep_links,
    ui_command,
    ui_env,
    wait_until_up,
)

__all__ = [
    "HISTORY_COLUMNS",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_VALUE_LEN",
    "RUN_STATUSES",
    "KIND_ARM",
    "TAG_ARM",
    "TAG_ARM_KEY",
    "TAG_GIT_COMMIT",
    "TAG_KIND",
    "TAG_PARENT",
    "TAG_POSITIONAL",
    "TAG_RUN_KEY",
    "TAG_STAGE",
    "TAG_SWEEP",
    "TAG_STAGE_KEY_PREFIX",
    "TAG_STAGE_RUN_PREFIX",
    "TAG_SWEEPS_PREFIX",
    "TAG_TRAINABLE",
    "TAG_TRAIN_KEY",
    "TERMINAL_STATUSES",
    "TRACKING_URI_ENV",
    "TRUNCATION_MARK",
    "MLflowTracker",
    "Store",
    "NullTracker",
    "Tracker",
    "default_tracking_uri",
    "describe_store",
    "download_artifact",
    "ensure_experiment",
    "fetch_histories",
    "fetch_runs",
    "latest_metrics",
    "get_or_create_stage_run",
    "ArmRunSpec",
    "JobTracking",
    "RunSpec",
    "arm_run",
    "backfill",
    "open_job_tracker",
    "stage_run",
    "sweep_arm_runs",
    "sweep_stage_keys",
    "sync_done_runs",
    "redact_uri",
    "run_info",
    "set_run_status",
    "arm_run_tags",
    "stages_experiment",
    "sweep_experiment",
    "stage_run_name",
    "stage_run_tags",
    "sweep_tag",
    "start_ui",
    "ui_command",
    "ui_env",
    "arms_link",
    "arms_view",
    "default_workers",
    "sweep_links",
    "wait_until_up",
]
