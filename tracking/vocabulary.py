"""The record's vocabulary: every tag, param, metric name and Optuna attribute that retort writes and reads.

Writers and readers both import these names, so that what a sweep writes is what ``compare`` reads. A
record written by an older retort may lack a name; readers treat a missing tag as unknown.
"""

from __future__ import annotations


class Tag:
    """MLflow run tags."""

    # every run
    VERSION = "retort.version"
    RECIPE = "retort.recipe"                # the recipe's name
    RECIPE_SOURCE = "retort.recipe_source"  # the file it was loaded from
    SEED = "retort.seed"
    COMMAND = "retort.command"              # the command line, secrets masked
    GIT = "retort.git"                      # prefix of retort's own code state: retort.git.commit, .dirty
    ACCELERATOR = "retort.accelerator"
    DEVICES = "retort.devices"
    DEVICE_COUNT = "retort.device_count"
    NUM_NODES = "retort.num_nodes"
    WORLD_SIZE = "retort.world_size"
    PRECISION = "retort.precision"
    FAILURE = "retort.failure"              # why a run ended FAILED or KILLED
    RESUMED = "retort.resumed"              # "true" once a run was continued with --resume
    RERUN_OF = "retort.rerun_of"            # the run a `retort rerun` repeated
    PROCESS = "retort.process"              # "host pid start-time" of the process writing the run
    HEARTBEAT = "retort.heartbeat"          # Unix time of its last sign of life (tracking/liveness.py)
    RECIPE_DIR = "retort.recipe_dir"        # the folder relative paths resolved against
    PATH = "retort.path"                    # prefix: retort.path.data.path, the absolute path a field named
    TESTED = "retort.tested"                # whose weights the test values are of: "epoch 31 of 40 (lowest val/loss)"

    # `retort run --seeds N`: the parent run and its seeds' runs
    SEEDS = "retort.seeds"                  # on the parent: the seeds, "0,1,2"
    SEED_RUNS = "retort.seed_runs"          # on the parent: the seeds' runs, in seed order
    SEED_GROUP = "retort.seed_group"        # on each seed's run: the parent's id (as is mlflow.parentRunId)

    # runs on GPUs
    CUDA_VERSION = "cuda.version"
    CUDNN_VERSION = "cudnn.version"
    GPU_DRIVER = "gpu.driver_version"
    GPU_MODEL = "gpu.model"
    GPU_COUNT = "gpu.count"

    # a sweep's parent run
    SWEEP = "retort.sweep"                  # "parent" on a sweep's parent run
    SWEEP_METRIC = "retort.sweep.metric"
    SWEEP_DIRECTION = "retort.sweep.direction"
    SWEEP_FIXED = "retort.sweep.fixed"      # swept fields a -s fixed, left out of the space (comma-separated)
    SWEEP_STOPPED = "retort.sweep.stopped"  # the stop rule that ended the sweep early, and why
    SWEEP_BASE_CHANGED = "retort.sweep.base_changed"  # fields that differ from the study's base (--resume-changed)
    SWEEP_BATCH_FITS = "retort.sweep.batch_size_fits"  # --cap-batch-size: the largest batch that fits
    SWEEP_BATCH_CAP = "retort.sweep.batch_size_cap"    # the largest kept (empty: the training split ended the probe)
    SWEEP_BATCH_DROPPED = "retort.sweep.batch_size_dropped"  # the batch sizes left out of the space (comma-separated)
    STUDY = "retort.study"                  # on the parent and on every trial's run
    TRIALS = "retort.trials"
    WORKERS = "retort.workers"
    SAMPLER_SEEDS = "retort.sampler_seeds"
    STORAGE = "retort.storage"
    DASHBOARD = "retort.dashboard"
    BEST_TRIAL = "retort.best_trial"
    BEST_RUN_ID = "retort.best_run_id"
    BEST_PARAMS = "retort.best_params"
    ANALYSIS_NOTES = "retort.analysis_notes"

    # a sweep trial's run
    TRIAL = "retort.trial"                  # the Optuna trial number
    TRIAL_STATE = "retort.trial_state"      # COMPLETE, PRUNED or FAIL
    PRUNED = "retort.pruned"                # why it was pruned
    WORKER = "retort.worker"
    SAMPLER_SEED = "retort.sampler_seed"
    RETRY_OF = "retort.retry_of"            # the trial number a re-queued trial repeats
    PLACEMENT = "retort.placement"          # the CUDA_VISIBLE_DEVICES its worker saw; on the parent, every worker's
    THREADS = "retort.threads"              # the torch CPU threads its worker had (its share of the machine's)
    GPU_MEMORY = "retort.gpu_memory"        # its memory budget on each GPU, where one was set (--gpu-memory, packing)
    SEED_VALUES = "retort.seed_values"      # sweep.seeds > 1: each seed's value of the metric, {"0": 0.31, ...}
    SWEEP_PARENT = "retort.sweep_parent"    # sweep.seeds > 1, on each seed's run: the sweep's parent run

    # MLflow's own
    PARENT_RUN_ID = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    SOURCE_NAME = "mlflow.source.name"


class Param:
    """Params (recipe fields by dotted path) that readers treat apart."""

    SEED = "seed"
    RUN_NAME = "tracking.run_name"          # names a run (shown as its name), never compared
    # descriptive: they say what a run is called, how it was recorded or swept, not what it trained, so
    # compare neither shows them as differing params nor groups by them unless asked (--descriptive)
    DESCRIPTIVE = ("name", "description")
    DESCRIPTIVE_PREFIXES = ("sweep.", "tracking.")


class Metric:
    """Metric keys the loop writes (``val/<metric>`` and ``test/<metric>`` for each recipe metric)."""

    TRAIN_LOSS = "train/loss"               # per step
    TRAIN_LOSS_EPOCH = "train/loss_epoch"   # the epoch's average over all ranks
    VAL_LOSS = "val/loss"
    TEST_LOSS = "test/loss"
    LR = "lr"
    SYSTEM_PREFIX = "system/"
    STOP_TRIALS_SAVED = "stop/trials_saved"     # a sweep's parent: trials a stop rule left unrun
    STOP_SECONDS_SAVED = "stop/seconds_saved"   # and their estimated compute (mean trial run time x trials)
    TRIAL_VALUE = "trial/value"                 # sweep.seeds > 1, a trial's run: the mean of its seeds' values
    TRIAL_VALUE_STD = "trial/value_std"         # and their standard deviation (n - 1)


class StudyAttr:
    """Optuna study and trial attributes."""

    METRIC = "retort.metric"                # study user attr: the metric the study optimizes
    RECIPE = "retort.recipe"                # study user attr: the base recipe's name
    PARENT_RUN_ID = "mlflow_parent_run_id"  # study user attr: the sweep's parent MLflow run
    BASE_RECIPE = "retort.base_recipe"      # study user attr: the base recipe it was made for, flat (path -> value)
    BASE_DIGEST = "retort.base_digest"      # study user attr: SHA-256 of that base
    OWNER = "retort:owner"                  # trial system attr: {host, pid, ctime, worker, seed} of its worker
    BEAT = "retort:heartbeat"               # trial system attr: time.time() of the owner's last heartbeat
    RETRIED = "retort:retried"              # trial system attr: why it was failed and re-queued
    TOKEN = "retort:token"                  # trial system attr: written with the trial, finds it after a lost reply
    FAIL_REASON = "fail_reason"             # trial system attr Optuna's own reporting reads
    RUN_ID = "mlflow_run_id"                # trial user attr: the trial's MLflow run
    RETRY_OF = "retry_of"                   # trial user attr: the number of the trial this one repeats
    FAILURE = "failure"                     # trial user attr: why the trial failed
    SEED_VALUES = "seed_values"             # trial user attr (sweep.seeds > 1): each seed's value, {"0": 0.31, ...}
    VALUE_STD = "value_std"                 # trial user attr (sweep.seeds > 1): their standard deviation (n - 1)
