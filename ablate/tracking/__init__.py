"""MLflow tracking: the only package that imports mlflow (lazily, so `import ablate.tracking` stays cheap).

Three users: the launcher (run management, single process, before jobs start), the trainer (a Tracker that
never blocks the training step) and analysis (fetch_runs / fetch_histories into pandas frames).

Modules: tags (every tag name, the stage-run tag builder), store (constants, URIs, the client, param/tag/search helpers), tracker (Tracker, NullTracker,
MLflowTracker), runs (run management), ui (the MLflow UI process) and read (fetch_runs, fetch_histories, download_artifact). Import
from here.
"""

from ablate.tracking.read import _client_histories as _client_histories  # tests compare it with the SQL read
from ablate.tracking.read import download_artifact, fetch_histories, fetch_runs
from ablate.tracking.runs import (
    ensure_experiment,
    get_or_create_stage_run,
    get_or_create_sweep_run,
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
    default_tracking_uri,
    describe_store,
    redact_uri,
)
from ablate.tracking.tags import (
    TAG_ARM,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_PARENT,
    TAG_POSITIONAL,
    TAG_RUN_KEY,
    TAG_STAGE,
    TAG_SWEEP,
    TAG_SWEEPS_PREFIX,
    TAG_TRAIN_KEY,
    TAG_TRAINABLE,
    stage_run_name,
    stage_run_tags,
    sweep_tag,
)
from ablate.tracking.tracker import LocalFirst, MLflowTracker, NullTracker, Tracker
from ablate.tracking.ui import default_workers, sweep_links, ui_command, wait_until_up

__all__ = [
    "HISTORY_COLUMNS",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_VALUE_LEN",
    "RUN_STATUSES",
    "TAG_ARM",
    "TAG_GIT_COMMIT",
    "TAG_KIND",
    "TAG_PARENT",
    "TAG_POSITIONAL",
    "TAG_RUN_KEY",
    "TAG_STAGE",
    "TAG_SWEEP",
    "TAG_SWEEPS_PREFIX",
    "TAG_TRAINABLE",
    "TAG_TRAIN_KEY",
    "TERMINAL_STATUSES",
    "TRACKING_URI_ENV",
    "TRUNCATION_MARK",
    "LocalFirst",
    "MLflowTracker",
    "NullTracker",
    "Tracker",
    "default_tracking_uri",
    "describe_store",
    "download_artifact",
    "ensure_experiment",
    "fetch_histories",
    "fetch_runs",
    "get_or_create_stage_run",
    "get_or_create_sweep_run",
    "redact_uri",
    "run_info",
    "set_run_status",
    "stage_run_name",
    "stage_run_tags",
    "sweep_tag",
    "ui_command",
    "default_workers",
    "sweep_links",
    "wait_until_up",
]
