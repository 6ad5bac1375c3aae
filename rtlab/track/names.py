"""Every name rtlab writes into MLflow, defined once: tags, params, metrics, artifacts.

The report, reproduce, status and sample read runs back through `rtlab.track`, which uses these;
nothing outside `rtlab.track` spells them out.
"""

from __future__ import annotations

# Tags on every run
ROLE_TAG = "rtlab.role"  # PARENT or CHILD
PARENT, CHILD = "parent", "child"
MLFLOW_PARENT_TAG = "mlflow.parentRunId"  # MLflow nests child runs under their parent by it
SPEC_PATH_TAG = "rtlab.spec_path"  # parent: the file `rtlab run` read

# Tags on child runs
ARM_TAG = "rtlab.arm"
SEED_TAG = "rtlab.seed"
GRID_POINT_TAG = "rtlab.grid_point"  # JSON
HASH_TAG = "rtlab.config_hash"
DATA_FINGERPRINT_TAG = "rtlab.data_fingerprint"  # sha256 of the prepared data it trained on
DEVICE_TAG = "rtlab.device"
FAILURE_TAG = "rtlab.failure_reason"

# Tags on the child runs of a searched experiment (`search:`)
PHASE_TAG = "rtlab.phase"  # TUNE (a trial's run) or CONFIRM (a rerun of an arm's best config)
TUNE, CONFIRM = "tune", "confirm"
STATE_TAG = "rtlab.state"  # how the run ended, in rtlab's words: one of RUN_STATES
FINISHED_STATE, PRUNED_STATE = "finished", "pruned"
FAILED_STATE, STOPPED_STATE = "failed", "stopped"
RUN_STATES = (FINISHED_STATE, PRUNED_STATE, FAILED_STATE, STOPPED_STATE)
STUDY_TAG = "rtlab.study"  # the Optuna study (one per arm and grid point)
TRIAL_TAG = "rtlab.trial"  # tune: the Optuna trial number that ran it; confirm: the best trial's
SLOT_TAG = "rtlab.trial_slot"  # tune: the trial's place in the arm's budget (0 .. trials - 1)
SEARCH_PARAMS_TAG = "rtlab.search_params"  # JSON: the sampled values of the searched keys
PRUNED_STEP_TAG = "rtlab.pruned_at_step"

# Provenance tags (rtlab.track.provenance)
GIT_COMMIT_TAG = "rtlab.git_commit"
GIT_DIRTY_TAG = "rtlab.git_dirty"
VERSION_TAG = "rtlab.version"
PYTHON_TAG = "rtlab.python"
TORCH_TAG = "rtlab.torch"
HOST_TAG = "rtlab.host"
PLATFORM_TAG = "rtlab.platform"

# Experiment tags
NOTE_TAG = "mlflow.note.content"  # the experiment's description in the MLflow UI

# Params besides the flattened config (`model.n_layer`, `train.learning_rate`, ...)
SEED_PARAM = "seed"
FLOPS_PER_TOKEN_PARAM = "flops_per_token"

# Metrics (step = optimizer step)
TRAIN_LOSS, VAL_LOSS = "train_loss", "val_loss"
FINAL_TRAIN_LOSS, FINAL_VAL_LOSS = "final_train_loss", "final_val_loss"
BEST_VAL_LOSS = "best_val_loss"
SUMMARY_METRICS = (FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, BEST_VAL_LOSS)

# Artifacts
SPEC_ARTIFACT = "spec.yaml"  # parent: the text of the spec file `rtlab run` read
CONFIG_ARTIFACT = "config.yaml"  # child: the resolved {data, model, train}
METRICS_ARTIFACT = "metrics.csv"
SAMPLE_ARTIFACT = "sample.txt"
CHECKPOINT_DIR = "checkpoint"

# Read back by the report, status and reproduce
BATCH_LOSS, TOKENS_SEEN, FLOPS_SEEN = "batch_loss", "tokens_seen", "flops_seen"
TOKENS_PER_SEC, MFU = "tokens_per_sec", "mfu"
OVERRIDES_TAG = "rtlab.overrides"  # parent: JSON list of the `--set` overrides `rtlab run` applied
OPTUNA_STORAGE_TAG = "rtlab.optuna_storage"  # parent: the storage URL of the studies
SEARCH_ARTIFACT = "search.json"  # parent: every study of a search, its trials and their budget
REPORT_DIR = "report"  # parent: the report `rtlab report` wrote

# Per position class (datasets that label positions, e.g. the pre-caching tasks): the validation
# loss over one class's positions is the metric CLASS_VAL_LOSS_PREFIX + class name, as the trainer
# writes it (rtlab.execute.trainer.CLASS_VAL_LOSS), at every evaluation step.
CLASS_VAL_LOSS_PREFIX = VAL_LOSS + "/"

# What a fresh browser shows (`rtlab ui`): MLflow >= 3.4 reads the experiment's kind to choose
# between its Model-training views (runs, charts) and its GenAI views (traces); without it a new
# browser may guess GenAI and hide the child runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
RUN_NOTE_TAG = "mlflow.note.content"  # a run's description, on its Overview page
# The runs view MLflow's "Share" button saves: one experiment tag holding the view as JSON, opened
# by `?viewStateShareKey=KEY` (rtlab.track.view writes rtlab's; `rtlab ui` prints its URL).
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SHARED_VIEW_PARAM = "viewStateShareKey"
VIEW_KEY = "rtlab"  # the view's share key: rtlab writes one view per experiment

# Checkpoints in the artifact store, for workers on other machines (rtlab.track.checkpoints): two
# slots written in turn, and a pointer naming the last slot whose upload completed.
RESUME_DIR = "resume"  # not CHECKPOINT_DIR: that one holds the finished run's checkpoint
RESUME_POINTER = "resume/latest.json"
