"""Train the UNet from a validated :class:`~skinseg.data.config.Config` into a run directory.

The run directory holds everything needed to reproduce or continue the run; its files are named, and its JSON and
CSV files read and written, by :mod:`skinseg.data.run_folder` (the contract ``skinseg export`` reads).

Ctrl-C, or a file named ``STOP`` in the run directory, ends training cleanly after the current step with the
best model saved. Progress reaches the caller through ``on_event`` callbacks: no printing here.
"""

from __future__ import annotations

import contextlib
import math
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinseg import __version__
from skinseg.data.config import Config, render_config
from skinseg.data.run_folder import LAST_MODEL, RunFolder, Split
from skinseg.runtime.atomic import atomic_path, write_json_atomic, write_text_atomic
from skinseg.runtime.errors import UsageError, param
from skinseg.runtime.outputs import LOCK_NAME, output_lock
from skinseg.training.recipe import DataSplits, augment_params, find_splits, sample_spec

Event = dict[str, Any]


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_value: float
    monitor: str
    stopped_by: str  # "epochs", "early_stopping", "stop_file", "interrupt", "nan" (the loss became NaN or infinite)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    worker: int = 0  # this process's rank in a multi-worker run (0: the chief, which wrote the run directory)
    workers: int = 1
    replicas: int = 1


# ---------------------------------------------------------------------------------------------- run dir


def check_run_dir(run_dir: Path, *, force: bool, resume: bool) -> None:
    """Refuse, before any work, a run directory that would be overwritten without ``force`` or cannot be resumed."""
    if resume:
        if not RunFolder(run_dir).last_model.is_file():
            raise UsageError(
                f"{run_dir}: nothing to resume ({LAST_MODEL} not found); start a new run without {param('resume')}"
            )
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a folder; choose another {param('output')}")
    if force and run_dir.is_symlink():
        raise UsageError(
            f"{run_dir}: a symbolic link; {param('force')} would empty the folder it points to: give that folder "
            f"({run_dir.resolve()}) or another {param('output')}"
        )
    if run_dir.is_dir() and _run_files(run_dir) and not force:
        raise UsageError(
            f"{run_dir}: a run already exists there; choose another {param('output')}, {param('resume')} it, or pass "
            f"{param('force')}"
        )


# What a resumed run may change: how long it trains and what it writes, never what it learns from or how. Sections
# of inference and evaluation settings do not shape training at all.
RESUME_MAY_CHANGE = {
    "train": {"epochs", "patience", "model_dir", "eval_dir", "create_backup", "show_history", "init_weights"},
}
_TRAINING_SECTIONS = (
    "model", "train", "eval", "generator", "augmentor", "deformation", "distortion", "barrdistortion",
    "pincdistortion", "brightening", "sharpening",
)  # fmt: skip


def resume_differences(run_dir: Path, cfg: Config, splits: DataSplits) -> list[str]:
    """What ``cfg`` and its data would change in the run being resumed: ``[section] key`` with the run's value and
    the new one (paths aside: the data are compared by the pairs' stems, so a project moved elsewhere resumes), then
    the split (pairs in or out of either side). Empty when the run continues as it started (a run folder from before
    ``config.resolved.ini``/``split.json`` is not checked there)."""
    import dataclasses

    from skinseg.data.config import IGNORED_KEYS, load_config

    run = RunFolder(run_dir)
    found: list[str] = []
    if run.config_resolved.is_file():
        before, now = load_config(run.config_resolved).to_dict(), cfg.to_dict()
        for section in _TRAINING_SECTIONS:
            # Paths are left to the split's check: a project moved to another disk resumes with the same pairs.
            paths = {f.name for f in dataclasses.fields(getattr(cfg, section)) if "Path" in str(f.type)}
            same = RESUME_MAY_CHANGE.get(section, set()) | set(IGNORED_KEYS.get(section, ())) | paths
            for key, value in now[section].items():
                if key not in same and before[section].get(key) != value:
                    found.append(f"[{section}] {key} {before[section].get(key)!r} → {value!r}")
    split = run.read_split()
    if split is not None and split.train:
        for side, stems in (("training", split.train), ("validation", split.valid)):
            new = sorted(p.stem for p in (splits.train if side == "training" else splits.valid))
            if new != stems:
                gone, added = len(set(stems) - set(new)), len(set(new) - set(stems))
                found.append(f"{side} pairs: {added} added, {gone} gone")
    return found


def check_resume(run_dir: Path, cfg: Config, splits: DataSplits) -> None:
    """UsageError when resuming would silently train another run (other data, split, network or recipe)."""
    changed = resume_differences(run_dir, cfg, splits)
    if changed:
        raise UsageError(
            f"{run_dir}: {param('resume')} continues the run as it started, and this config or its data differ "
            f"from the run's ({'; '.join(changed)}); resume with the config and options it started with (its "
            f"values are in {RunFolder(run_dir).config_resolved}), or start a new run"
        )


def _run_files(run_dir: Path) -> list[Path]:
    """What the run directory holds besides its lock."""
    return [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"{run_dir}: cannot create the run directory ({e.strerror}); choose another {param('output')}"
        ) from None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock while this process writes it: a second ``skinseg train`` into it (with
    ``--force`` or ``--resume``) stops at once instead of deleting or overwriting a live run. The directory is
    created for the lock, and removed again if the run never wrote anything into it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a folder; choose another {param('output')}")
    created = []  # the folders made for the lock, deepest first: removed again if the run writes nothing
    at = run_dir
    while not at.exists() and at.parent != at:
        created.append(at)
        at = at.parent
    _make_run_dir(run_dir)
    try:
        with output_lock(run_dir, command="train"):
            yield
    finally:
        if not _run_files(run_dir):  # nothing written: no lock file left behind, nor the folders made for it
            with contextlib.suppress(OSError):
                (run_dir / LOCK_NAME).unlink()
                for folder in created:
                    folder.rmdir()


def prepare_run_dir(run_dir: Path, *, force: bool, resume: bool) -> None:
    """Create the run directory; an existing run is kept unless ``force`` (or continued with ``resume``)."""
    check_run_dir(run_dir, force=force, resume=resume)
    if resume:
        return
    for path in _run_files(run_dir):  # an old run, with --force; the lock this run holds stays
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    _make_run_dir(run_dir)


def record_run(run_dir: Path, cfg: Config, splits: DataSplits) -> None:
    """Write the config as given and resolved, the versions and the split."""
    import keras
    import tensorflow as tf

    run = RunFolder(run_dir)
    if cfg.source and cfg.source.is_file():
        shutil.copyfile(cfg.source, run.config_given)
    write_text_atomic(run.config_resolved, render_config(cfg, comments=False))
    write_json_atomic(
        run.versions,
        {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "skinseg": __version__,
            "platform": platform.platform(),
        },
    )
    run.write_split(Split.of_pairs(splits.train, splits.valid, splits.warnings))


# ---------------------------------------------------------------------------------------------- training


def learning_rate(cfg: Config, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate: a number (``plateau``: halved by a callback) or a cosine schedule.

    ``cosine`` decays from ``[model] learning_rate`` to 0 over ``epochs`` (after ``warmup_epochs`` of linear
    warm-up from 0): a fixed-length schedule that needs no validation signal to lower the rate.
    """
    if cfg.train.lr_schedule != "cosine":
        return cfg.model.learning_rate
    import keras

    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup = round(cfg.train.warmup_epochs * steps_per_epoch)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, warmup_target=cfg.model.learning_rate, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(cfg.model.learning_rate, total)


def build_model(cfg: Config, steps_per_epoch: int = 1):
    """The UNet the config describes, compiled."""
    from skinseg.training.losses import compile_model
    from skinseg.training.model import build_unet

    m = cfg.model
    if m.encoder == "efficientnet_lite0":
        from skinseg.training.encoders import IMAGENET_WEIGHTS, build_lite_unet

        model = build_lite_unet(
            image_height=m.image_height,
            image_width=m.image_width,
            base_filters=m.base_filters,
            dropout_rate=m.dropout_rate,
            weights=m.encoder_weights or IMAGENET_WEIGHTS,
            seed=cfg.train.seed,
        )
    else:
        model = build_unet(
            image_height=m.image_height,
            image_width=m.image_width,
            image_channels=m.image_channels,
            num_classes=m.num_classes,
            base_filters=m.base_filters,
            num_layers=m.num_layers,
            base_kernels=m.base_kernels,
            dilation=m.dilation,
            dropout_rate=m.dropout_rate,
            batch_norm=m.normalization,
            activation=m.activation,
            block=m.block,
            seed=cfg.train.seed,
        )
    if cfg.train.init_weights is not None:
        from skinseg.training.model import copy_weights, load_model

        copy_weights(load_model(cfg.train.init_weights, compile=False), model, source_name=cfg.train.init_weights)
    compile_model(
        model,
        loss=m.loss,
        metrics=list(m.metrics),
        learning_rate=learning_rate(cfg, steps_per_epoch),
        clipvalue=m.clipvalue,
        optimizer=m.optimizer,
    )
    # The optimizer's slots for every weight now, frozen or not, so unfreezing the encoder later needs no rebuild.
    model.optimizer.build(model.trainable_variables)
    return model


def native_bfloat16(cpuinfo: str | None = None) -> str:
    """What computes bfloat16 natively here ("AVX-512 BF16", "AMX", "GPU"), or "" when nothing does."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else ""


def precision_policy(setting: bool | str, cpuinfo: str | None = None) -> str:
    """The Keras dtype policy for ``[train] mixed_precision``: ``"auto"`` asks :func:`native_bfloat16`."""
    if setting == "auto":
        setting = bool(native_bfloat16(cpuinfo))
    return "mixed_bfloat16" if setting else "float32"


def validation_epochs(epochs: int, every: int) -> list[int]:
    """The (1-based) epochs after which validation runs: every ``every`` epochs, and always after the last."""
    return sorted({*range(every, epochs + 1, every), epochs})


def _encoder_freezer(model: Any, until_epoch: float):
    """A callback that keeps the pretrained encoder frozen (weights and batch-norm statistics) for the first
    ``until_epoch`` epochs (rounded up), then trains it with the rest; None when there is nothing to freeze."""
    import keras

    from skinseg.training.encoders import encoder_layers

    frozen = encoder_layers(model)
    if not frozen or until_epoch <= 0:
        return None
    until = math.ceil(until_epoch)

    class EncoderFreezer(keras.callbacks.Callback):
        def _set(self, trainable: bool) -> None:
            if frozen[0].trainable == trainable:
                return
            for layer in frozen:
                layer.trainable = trainable
            self.model.make_train_function(force=True)  # the step's variable list is fixed when it is traced

        def on_train_begin(self, logs=None) -> None:
            self._set(False)

        def on_epoch_begin(self, epoch: int, logs=None) -> None:
            self._set(epoch >= until)

    return EncoderFreezer()


def train(
    cfg: Config,
    *,
    run_dir: Path,
    force: bool = False,
    resume: bool = False,
    skip_bad: bool = False,
    strategy: str = "auto",
    on_event: Callable[[Event], None] | None = None,
) -> TrainResult:
    """Train as the config says; write the run directory; return a summary.

    ``strategy`` (:data:`skinseg.training.distribute.STRATEGIES`): ``single`` trains in this process on one
    device; ``mirrored`` on every GPU of this host; ``multiworker`` with the workers ``TF_CONFIG`` lists (every
    worker calls this with the same arguments; the chief alone writes ``run_dir``); ``auto`` picks one.

    ``on_event`` receives dicts: ``{"event": "data", ...}``, ``{"event": "batch", "epoch", "step", "steps",
    "logs"}``, ``{"event": "epoch", "epoch", "epochs", "logs", "best", "seconds"}``,
    ``{"event": "warning", "message"}``.
    """
    with contextlib.ExitStack() as locks:
        return _train(
            cfg,
            run_dir=run_dir,
            force=force,
            resume=resume,
            skip_bad=skip_bad,
            strategy=strategy,
            on_event=on_event,
            locks=locks,
        )


def _train(
    cfg: Config,
    *,
    run_dir: Path,
    force: bool,
    resume: bool,
    skip_bad: bool,
    strategy: str,
    on_event: Callable[[Event], None] | None,
    locks: contextlib.ExitStack,
) -> TrainResult:
    """:func:`train`; the process that writes the run directory holds its lock in ``locks``."""
    from skinseg.training import distribute
    from skinseg.training.tf_setup import configure_tensorflow

    emit = on_event or (lambda e: None)
    started = time.perf_counter()
    distribute.pin_to_cpus_from_env()  # a worker of --local-workers: its share of the cores, before TensorFlow starts
    configure_tensorflow()
    plan = distribute.plan_strategy(strategy, gpus=distribute.count_gpus if strategy == "auto" else None)
    if plan.note:
        emit({"event": "warning", "message": plan.note})
    dist = None
    if plan.kind != "multiworker":
        locks.enter_context(run_lock(run_dir))
        check_run_dir(run_dir, force=force, resume=resume)
        splits = find_splits(cfg, skip_bad=skip_bad)
        if resume:
            check_resume(run_dir, cfg, splits)
        if plan.kind == "mirrored":
            dist = distribute.start_strategy(plan)
    else:  # the workers connect first, then check and agree: all start, or all stop
        dist = distribute.start_strategy(plan)
        splits = _agree_on_start(dist, cfg, run_dir, force=force, resume=resume, skip_bad=skip_bad, locks=locks)
    for w in splits.warnings:
        emit({"event": "warning", "message": w})

    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    policy = precision_policy(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)

    import cv2

    from skinseg.training.augment import Augmenter
    from skinseg.training.data import ExampleSource, make_dataset, steps_for

    bs = cfg.train.batch_size
    replicas = dist.replicas if dist else 1
    local = dist.local_replicas if dist else 1
    rank = dist.rank if dist else 0
    writer = dist is None or dist.is_chief
    if bs % replicas:
        raise UsageError(
            f"[train] batch_size {bs} does not split evenly across {replicas} replicas; use a multiple of "
            f"{replicas} (e.g. {replicas * max(1, round(bs / replicas))}): the global batch is split across them"
        )
    per_replica = bs // replicas
    steps = cfg.train.steps_per_epoch or steps_for(len(splits.train), bs)
    scope = dist.strategy.scope() if dist else contextlib.nullcontext()
    # The model first: a config the --init-weights model does not fit fails before the run directory is touched.
    state = _load_state(run_dir) if resume else {}
    with scope:
        if resume:
            from skinseg.training.model import load_model

            model = load_model(RunFolder(run_dir).last_model)
        else:
            model = build_model(cfg, steps)
    if writer and not resume:
        prepare_run_dir(run_dir, force=force, resume=False)
        record_run(run_dir, cfg, splits)

    cv2.setNumThreads(1)  # tf.data runs several augmentation workers; one OpenCV thread each is fastest
    spec = sample_spec(cfg)
    emit({"event": "data", "train": len(splits.train), "valid": len(splits.valid), "phase": "loading"})
    train_src = ExampleSource(splits.train, spec, on_load=lambda i, n: emit({"event": "load", "i": i, "n": n}))
    augmenter = Augmenter(augment_params(cfg)) if cfg.generator.augmentation else None
    start = int(model.optimizer.iterations.numpy()) * bs  # a resumed run continues the stream of examples
    # Validation: each replica evaluates an equal share (the remainder, fewer than the replicas, is left out).
    share = len(splits.valid) // replicas
    if share == 0:
        raise UsageError(
            f"{len(splits.valid)} validation pair(s) for {replicas} replicas: each replica needs at least one; "
            "add validation pairs or train on fewer workers"
        )
    if share * replicas < len(splits.valid):
        emit(
            {
                "event": "warning",
                "message": f"validation uses {share * replicas} of {len(splits.valid)} pairs: an equal share "
                f"for each of the {replicas} replicas",
            }
        )
    first = rank * local  # this worker's first replica
    valid_srcs = [
        ExampleSource(splits.valid[(first + j) * share : (first + j + 1) * share], spec) for j in range(local)
    ]
    val_steps = min(cfg.train.validation_steps or 10**9, steps_for(share, per_replica))
    train_kw = dict(seed=cfg.train.seed, train=True, augmenter=augmenter, start=start)
    if dist is None:
        train_ds = make_dataset(train_src, batch_size=bs, **train_kw)
        valid_ds = make_dataset(valid_srcs[0], batch_size=bs, seed=cfg.train.seed, train=False)
    else:
        shard = (rank, dist.workers)

        def train_fn(ctx):
            return make_dataset(train_src, batch_size=per_replica, shard=shard, local_batches=local, **train_kw)

        def valid_fn(ctx):
            return distribute.round_robin(
                [make_dataset(v, batch_size=per_replica, seed=cfg.train.seed, train=False) for v in valid_srcs]
            )

        sample = next(iter(make_dataset(valid_srcs[0], batch_size=per_replica, seed=cfg.train.seed, train=False)))
        distribute.prepare_model(model, dist, sample)
        train_ds = dist.strategy.distribute_datasets_from_function(train_fn)
        valid_ds = dist.strategy.distribute_datasets_from_function(valid_fn)
    emit(
        {
            "event": "data",
            "train": len(splits.train),
            "valid": len(splits.valid),
            "phase": "ready",
            "steps": steps,
            "params": model.count_params(),
            "precision": "bfloat16 compute" if policy == "mixed_bfloat16" else "float32",
            **({"strategy": dist.describe(), "replicas": replicas, "per_replica_batch": per_replica} if dist else {}),
        }
    )

    agree = dist.any if dist and dist.workers > 1 else None  # several processes stop together
    tracker = _run_tracker(run_dir, cfg, emit, steps=steps, state=state, writer=writer, agree=agree)
    callbacks = [tracker]  # it also stops on a non-finite loss (keras's TerminateOnNaN would save the NaN weights)
    freezer = _encoder_freezer(model, cfg.train.freeze_encoder_epochs)
    if freezer is not None:
        callbacks.insert(0, freezer)
    if cfg.train.learning_rate_reducer and cfg.train.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=cfg.train.reducer_factor,
                patience=cfg.train.reducer_patience,
                verbose=0,
            )
        )
    initial_epoch = int(state.get("epoch", 0))
    try:
        model.fit(
            train_ds,
            epochs=cfg.train.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=valid_ds,
            validation_steps=val_steps,
            validation_freq=validation_epochs(cfg.train.epochs, cfg.train.validation_freq),
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
    except KeyboardInterrupt:
        tracker.stopped_by = "interrupt"
    except Exception as e:
        if dist is None or dist.plan.kind != "multiworker" or not distribute.is_peer_failure(e):
            raise
        saved = (
            f"the chief's last checkpoint is epoch {tracker.epoch} in {run_dir}"
            if tracker.epoch
            else "no epoch was saved"
        )
        raise distribute.WorkerLostError(
            f"worker {rank} of {dist.workers}: lost contact with another worker "
            f"({distribute.peer_failure_reason(e)}) in epoch {tracker.epoch + 1}; the run stopped on every "
            f"worker; {saved}: start every worker again" + (f" with {param('resume')}" if tracker.epoch else "")
        ) from None
    if tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)  # restore the best epoch (EarlyStopping semantics)
    return TrainResult(
        run_dir=run_dir,
        epochs_run=tracker.epoch,
        best_epoch=tracker.best_epoch,
        best_value=tracker.best,
        monitor=tracker.monitor,
        stopped_by=tracker.stopped_by,
        history=tracker.history,
        seconds=time.perf_counter() - started,
        worker=rank,
        workers=dist.workers if dist else 1,
        replicas=replicas,
    )


def _agree_on_start(
    dist: Any,
    cfg: Config,
    run_dir: Path,
    *,
    force: bool,
    resume: bool,
    skip_bad: bool,
    locks: contextlib.ExitStack,
) -> DataSplits:
    """The start-up checks on every worker, then agreement: all start, or all stop with a reason.

    The chief checks the run directory (it alone writes it); with ``resume`` every worker must read the chief's
    checkpoint (a shared filesystem). Every worker must see the same training and validation pairs.
    """
    from skinseg.runtime.errors import SkinsegError
    from skinseg.training.distribute import fingerprint

    problem: SkinsegError | None = None
    splits = None
    try:
        if dist.is_chief:
            locks.enter_context(run_lock(run_dir))
            check_run_dir(run_dir, force=force, resume=resume)
        elif resume and not RunFolder(run_dir).last_model.is_file():
            raise UsageError(
                f"{RunFolder(run_dir).last_model}: worker {dist.rank} cannot read the chief's checkpoint; "
                f"{param('resume')} needs the run directory on a filesystem every worker reads"
            )
        splits = find_splits(cfg, skip_bad=skip_bad)
        if resume:
            check_resume(run_dir, cfg, splits)
    except SkinsegError as e:
        problem = e
    train_stems = [p.stem for p in splits.train] if splits else []
    valid_stems = [p.stem for p in splits.valid] if splits else []
    seen = [float(len(train_stems)), float(len(valid_stems)), *fingerprint([*train_stems, "|", *valid_stems])]
    rows = dist.gather([0.0 if problem is None else 1.0, *seen])
    workers = [rows[r * dist.local_replicas] for r in range(dist.workers)]  # one row per worker
    if problem is not None:
        raise problem
    failed = [w for w, row in enumerate(workers) if row[0]]
    if failed:
        raise UsageError(
            f"worker {failed[0]} of {dist.workers} could not start (its own output says why); fix that and start "
            "every worker again"
        )
    if any(row[1:] != workers[0][1:] for row in workers):
        counts = "; ".join(
            f"worker {w}: {int(row[1])} training and {int(row[2])} validation pairs" for w, row in enumerate(workers)
        )
        raise UsageError(
            f"the workers see different data ({counts}); every worker must read the same data folders "
            "(a shared filesystem or identical copies at the same paths)"
        )
    return splits


def _load_state(run_dir: Path) -> dict[str, Any]:
    return RunFolder(run_dir).read_state()


def _run_tracker(*args: Any, **kwargs: Any):
    """A :class:`keras.callbacks.Callback` (defined here so importing this module does not import Keras)."""
    import keras

    class RunTracker(_RunTrackerMixin, keras.callbacks.Callback):
        pass

    return RunTracker(*args, **kwargs)


class _RunTrackerMixin:
    """Best/last checkpoints, early stopping, CSV log, curves, STOP file, and progress events, in one place."""

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        emit: Callable[[Event], None],
        *,
        steps: int,
        state: dict[str, Any],
        writer: bool = True,
        agree: Callable[[bool], bool] | None = None,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.run = RunFolder(run_dir)
        self.writer = writer  # False on the workers of a multi-worker run other than the chief: they write nothing
        # Several workers must take every decision to stop together: ``agree(flag)`` is True on all when on any.
        self.agree = agree or (lambda flag: flag)
        self.emit = emit
        self.steps = steps
        self.epochs = cfg.train.epochs
        self.patience = cfg.train.patience
        self.monitor = "val_loss"
        self.best = float(state.get("best", math.inf))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.wait = int(state.get("wait", 0))
        self.epoch = int(state.get("epoch", 0))
        self.history: list[dict[str, float]] = self.run.read_history()
        self.best_weights = None
        self.stopped_by = "epochs"
        self._t0 = time.perf_counter()

    def _stop_requested(self) -> bool:
        return self.run.stop_file.exists()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.emit(
            {
                "event": "batch",
                "epoch": self.epoch + 1,
                "epochs": self.epochs,
                "step": batch + 1,
                "steps": self.steps,
                "logs": {k: float(v) for k, v in (logs or {}).items()},
            }
        )
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):  # the same on every worker: the loss is all-reduced
            self.stopped_by = "nan"
            self.model.stop_training = True
        if self.agree(self._stop_requested()):
            self.stopped_by = "stop_file"
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        from skinseg.training.model import save_model_atomic

        if self.stopped_by == "nan":  # keep the last finite checkpoint and history: the epoch is not recorded
            return
        logs = {k: float(v) for k, v in (logs or {}).items()}
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        self.epoch = epoch + 1
        validated = self.monitor in logs  # [train] validation_freq: some epochs are not validated
        value = logs.get(self.monitor, math.inf)
        improved = value < self.best
        if improved:
            self.best, self.best_epoch, self.wait = value, self.epoch, 0
            self.best_weights = self.model.get_weights()
            if self.writer:
                save_model_atomic(self.model, self.run.best_model)
        elif validated:
            self.wait += 1
        self.history.append({"epoch": self.epoch, **logs})
        if self.writer:
            save_model_atomic(self.model, self.run.last_model)
            self.run.write_history(self.history)
            self.run.write_state(
                {"epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
            )
            _plot_curves(self.run.curves, self.history)
        self.emit(
            {
                "event": "epoch",
                "epoch": self.epoch,
                "epochs": self.epochs,
                "logs": logs,
                "improved": improved,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "seconds": time.perf_counter() - self._t0,
            }
        )
        if self.wait >= self.patience:
            self.stopped_by = "early_stopping"
            self.model.stop_training = True
        if self.agree(self._stop_requested()):
            self.stopped_by = "stop_file"
            self.model.stop_training = True


def _plot_curves(path: Path, rows: list[dict[str, float]]) -> None:
    """Loss and metric curves, train and validation, one panel each (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in rows[0] if k not in ("epoch", "learning_rate") and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot(epochs, [r.get(name, math.nan) for r in rows], label="train")
        if any(f"val_{name}" in r for r in rows):
            ax.plot(epochs, [r.get(f"val_{name}", math.nan) for r in rows], label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
