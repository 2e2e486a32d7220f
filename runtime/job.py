"""One image's work in a batch: :class:`ImageJob` and :func:`process_image`, the one function of (model, image
path, options, output folder, relative path) that the local runner and the Dask runner both call.

An image job owns the image's output paths and takes its steps in order: is there work at all (outputs up to date,
or a failure of an unchanged input: :meth:`ImageJob.no_work`), a file skinseg did not write in the way
(:meth:`ImageJob.check_not_foreign`) or another photo's mask (:meth:`ImageJob.check_not_another_photos`), read,
segment (under the model's inference lock), write the outputs (the mask last), and the report row. Its only shared
state is the process's loaded models (:data:`skinseg.runtime.model_cache.MODELS`), so the same call runs unchanged
on other processes or machines.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from skinseg import __version__
from skinseg.runtime.defaults import DEFAULT_OVERLAY_SIZE
from skinseg.runtime.errors import ImageError, ResourceError, one_line, param
from skinseg.runtime.imageheaders import image_size
from skinseg.runtime.imageio import decode_image, file_fingerprint, load_image_file
from skinseg.runtime.model_cache import MODELS
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import (
    OutputPaths,
    check_inside,
    is_ours,
    output_paths,
    quick_stat,
    read_record,
    settings_digest,
    source_key,
    up_to_date,
    write_outputs,
)
from skinseg.runtime.records import ImageRow
from skinseg.runtime.report import Row, empty_row, stats_row, versions

__all__ = ["ImageJob", "estimate_memory", "failure_key", "image_cost", "no_work_row", "process_image"]

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
FAILED_FINGERPRINT_MAX_BYTES = 512 << 20  # a failed input larger than this is retried rather than hashed each run


def estimate_memory(width: int, height: int, options: InferOptions, work: tuple[int, int] | None = None) -> int:
    """Bytes one image of ``width × height`` needs while it is worked on (an upper estimate for admission).

    Full size: the probability map and the mask (1 byte a pixel each), the hole-filling frame (1) and the PNG
    encoder's copy (1); the decode kept for the overlay (3 bytes a pixel at up to 1/2 of each side of a large
    photo, all of a small one) and the overlay itself; at the working size ``work`` (the size the model sees, e.g.
    the full size with ``--scale native``): the resized image and its colour-corrected copy (3 + 3), the blending
    sums (4 + 4) and the probabilities (1); 64 MB of slack. The model's own working memory is counted once per run,
    not per image (:func:`model_memory`).
    """
    pixels = width * height
    decoded = pixels if max(width, height) <= 2 * DEFAULT_OVERLAY_SIZE else pixels // 4
    if options.overlay_size is None:
        decoded = pixels
    overlay = min(pixels, (options.overlay_size or max(width, height)) ** 2)
    working = 15 * work[0] * work[1] if work is not None else 0
    return 4 * pixels + 3 * decoded + 6 * overlay + (pixels if options.save_prob else 0) + working + (64 << 20)


def image_cost(segmenter: Any, image_path: str | os.PathLike[str], options: InferOptions) -> int:
    """:func:`estimate_memory` of an image file, from its header and the size ``segmenter`` works at."""
    try:
        width, height = image_size(image_path)
        work = segmenter.work_size(width, height)
    except (ImageError, OSError, ValueError, ArithmeticError):
        return 64 << 20  # it will fail fast
    return estimate_memory(width, height, options, work)


def _overlay_size(width: int, height: int, options: InferOptions) -> tuple[int, int]:
    long_side = max(width, height)
    limit = options.overlay_size or long_side
    from skinseg.runtime.imageio import JPEG_MAX_SIDE

    limit = min(limit, JPEG_MAX_SIDE)  # a JPEG cannot be wider: a 70,000 px photo still gets an overlay
    if long_side <= limit:
        return width, height
    f = limit / long_side
    return max(1, round(width * f)), max(1, round(height * f))


def _decoder_versions() -> dict[str, str]:
    """The versions of the code that judged an input (a failure under another skinseg or OpenCV is retried)."""
    global _DECODERS
    if _DECODERS is None:
        found = versions()
        _DECODERS = {"skinseg": found["skinseg"], "opencv": found["opencv"]}
    return _DECODERS


_DECODERS: dict[str, str] | None = None


def _foreign_outputs(paths: OutputPaths | None) -> list[str]:
    """The names of the image's output files present in the output folder that skinseg did not write."""
    if paths is None:
        return []
    return sorted(p.name for p in paths.all() if os.path.lexists(p) and not is_ours(p))


def failure_key(options: InferOptions, model_sha256: str, paths: OutputPaths | None) -> str:
    """What an image's failure depended on besides the input's content: the model, the output options,
    ``max_pixels``, the versions of skinseg and OpenCV, and the foreign files in the way of its outputs. A failed
    row records it (its ``settings``); a rerun retries the image when it differs (another ``--max-pixels``, the
    foreign file moved away, a fixed decoder), and otherwise not: it would fail the same way again."""
    facts = {
        **options.output_settings(),
        "max_pixels": options.max_pixels,
        "decoders": _decoder_versions(),
        "foreign": _foreign_outputs(paths),
    }
    owner = _mask_owner(paths)
    if owner is not None:  # another photo's mask in the way: retried once it is moved away
        facts["owner"] = owner
    return settings_digest(model_sha256, facts)


def _mask_owner(paths: OutputPaths | None) -> str | None:
    """The :func:`~skinseg.runtime.outputs.source_key` of the input the existing mask was made from, if it says."""
    record = read_record(paths.mask) if paths is not None else None
    return record.get("source") if record is not None else None


def _failed_before(
    previous: Row | None,
    options: InferOptions,
    model_sha256: str,
    paths: OutputPaths,
    image_path: str | os.PathLike[str],
) -> bool:
    """Whether ``previous`` is a failure of this very input in the same circumstances (then it is not retried)."""
    if not previous or previous.get("status") != "failed" or not previous.get("fingerprint"):
        return False
    if previous.get("settings") != failure_key(options, model_sha256, paths):
        return False
    try:
        return file_fingerprint(image_path) == previous["fingerprint"]
    except (ImageError, OSError):
        return False


def _stat(path: str | os.PathLike[str]) -> list[int] | None:
    try:
        return quick_stat(os.stat(path))
    except OSError:
        return None


def _failed_fingerprint(image_path: str | os.PathLike[str], before: list[int] | None) -> str | None:
    """The content fingerprint of an input refused before it was read whole, if it is a regular file of a size
    worth hashing again on each run (a multi-gigabyte file that lies about its content is simply retried) and it
    has not changed since the attempt began (``before``, its :func:`quick_stat`): a copy that completed meanwhile
    is not what failed, and must be retried."""
    try:
        if before is None or before[0] > FAILED_FINGERPRINT_MAX_BYTES:
            return None
        fingerprint = file_fingerprint(image_path)
    except (ImageError, OSError):
        return None
    return fingerprint if _stat(image_path) == before else None


def _check_space(output_root: str | os.PathLike[str], width: int, height: int) -> None:
    """OSError(ENOSPC) before any work when the output disk cannot take this image's outputs."""
    need = width * height // 8 + (8 << 20)  # a 1-bit mask without compression, an overlay, a margin
    try:
        free = shutil.disk_usage(output_root).free
    except OSError:
        return
    if free < need:
        raise OSError(errno.ENOSPC, f"no space left on the output disk ({free / 1e6:.0f} MB free)")


class ImageJob:
    """One input image of a batch: its output paths and the steps that turn it into outputs and a report row.

    ``model_path`` and ``options`` (pinned: ``options.model_sha256``) name the segmenter in this process's
    :data:`~skinseg.runtime.model_cache.MODELS`; ``rel_path`` is the image's path relative to its source (its
    outputs mirror it under ``output_root``); ``previous`` is the image's row of an earlier run, if any.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        image_path: str | os.PathLike[str],
        options: InferOptions,
        output_root: str | os.PathLike[str],
        rel_path: str | PurePosixPath,
        *,
        previous: Row | None = None,
    ) -> None:
        self.model_path, self.image_path, self.options = model_path, image_path, options
        self.output_root, self.rel, self.previous = output_root, PurePosixPath(rel_path), previous
        self.segmenter, self.lock = MODELS.get(model_path, options)  # no model, no batch: this one raises
        self.settings = options.settings(self.segmenter.model_sha256 or "")
        self._paths: OutputPaths | None = None

    @property
    def paths(self) -> OutputPaths:
        """The image's output files (ImageError when they would leave the output folder)."""
        if self._paths is None:
            self._paths = output_paths(self.output_root, self.rel, self.options)
        return self._paths

    def empty_row(self) -> Row:
        """The image's row before any work: its paths, the settings and the model that will judge it."""
        row = empty_row(self.rel, self.image_path)
        row.update(settings=self.settings, model_sha256=self.segmenter.model_sha256)
        return row

    def no_work(self, row: Row | None = None) -> Row | None:
        """The row of an image that needs no work (its outputs are up to date; or it failed before and has not
        changed since), or None."""
        options, row = self.options, row if row is not None else self.empty_row()
        if options.overwrite:
            return None
        record = up_to_date(self.paths, self.image_path, self.settings)
        if record is not None:
            return {**row, **(record.get("row") or {}), "status": "skipped", "fingerprint": record.get("input")}
        sha, previous = options.model_sha256 or "", self.previous
        if (
            previous is not None
            and not options.retry_failed
            and _failed_before(previous, options, sha, self.paths, self.image_path)
        ):
            return {**previous, "input": row["input"], "retried": False}
        return None

    def check_not_foreign(self) -> None:
        """ImageError if an output would replace a file skinseg did not write."""
        ours_before = self.previous is not None and self.previous.get("status") in ("ok", "skipped")
        for path in self.paths.all():
            if os.path.lexists(path) and not ours_before and not is_ours(path):
                raise ImageError(
                    f"{path} exists and was not written by skinseg; refusing to overwrite it (move it away, or "
                    f"choose another {param('output')} than the input folder)"
                )

    def check_not_another_photos(self, fingerprint: str) -> None:
        """ImageError if the mask is another photo's: one of the same name from another folder (or a camera that
        restarts at IMG_0001 in a new folder each day), segmented by an earlier run into this output folder. Another
        photo is another path *and* other content (``fingerprint``, this input's): the same photo moved or reached
        by a link is the same photo, whatever else changed; the same path with new content (an edited or replaced
        photo) is redone; ``options.overwrite`` replaces whatever is there. Masks written before records named
        their input are judged by the previous report's row."""
        if self.options.overwrite:
            return
        record = read_record(self.paths.mask)
        if record is None or record.get("input") == fingerprint:
            return
        mine, previous = os.path.abspath(self.image_path), self.previous or {}
        was = previous.get("input") if previous.get("status") in ("ok", "skipped") else None
        if record.get("source") is not None:
            other = record["source"] != source_key(mine)
        else:
            other = bool(was) and was != mine
        if other:  # the fix first: a long path at the end may be cut from the report's one-line error
            that = f"; that photo: {was}" if was and was != mine else ""
            raise ImageError(
                f"{self.paths.mask.name} holds the mask of another photo of the same name (an earlier run): rename "
                f"this file, segment it into another {param('output')}, or use {param('overwrite')} to replace that "
                f"mask{that}"
            )

    def run(self, *, on_tile: Callable[[int, int], None] | None = None) -> ImageRow:
        """Do the image: skip it, or read, segment, write its outputs; its row (see :func:`process_image`)."""
        start = time.perf_counter()
        options, segmenter, image_path, output_root = self.options, self.segmenter, self.image_path, self.output_root
        row = self.empty_row()
        before = _stat(image_path)
        paths: OutputPaths | None = None
        try:
            paths = self.paths
            done = self.no_work(row)
            if done is not None:
                return ImageRow.from_dict(self.with_review(done))
            row["skinseg_version"] = __version__  # this run works on it (a skipped row has its mask's record's)
            self.check_not_foreign()
            file = load_image_file(image_path, max_pixels=options.max_pixels)
            row["fingerprint"] = file.fingerprint
            self.check_not_another_photos(file.fingerprint)
            width, height = file.info.width, file.info.height
            _check_space(output_root, width, height)
            overlay_wh = _overlay_size(width, height, options)
            factor = segmenter.decode_factor(width, height)
            image = decode_image(file, reduce=factor)
            picture = image if (image.shape[1], image.shape[0]) == overlay_wh else None
            if picture is None and overlay_wh[0] > image.shape[1]:  # a larger overlay than the decode: decode again
                picture = decode_image(file, reduce=max(f for f in (1, 2, 4, 8) if width / f >= overlay_wh[0]))
            stat_now = quick_stat(file.stat)
            del file
            asked = time.perf_counter()
            with self.lock:
                waited = time.perf_counter() - asked
                result = segmenter.segment(
                    image, on_tile=on_tile, full_size=(width, height), keep_prob=options.save_prob
                )
            if picture is None:
                picture = image
            if (picture.shape[1], picture.shape[0]) != overlay_wh:
                import cv2

                picture = cv2.resize(picture, overlay_wh, interpolation=cv2.INTER_AREA)
            del image
            paths.mask.parent.mkdir(parents=True, exist_ok=True)
            check_inside(Path(output_root).resolve(), paths.mask.parent, self.rel)  # a link appeared meanwhile?
            stats = {**stats_row(result.stats), "model_sha256": segmenter.model_sha256, "skinseg_version": __version__}
            record = {
                "input": row["fingerprint"],
                "source": source_key(image_path),
                "stat": stat_now,
                "settings": self.settings,
                "row": stats,
            }
            write_outputs(
                paths, picture, result, record=record, color=options.overlay_color, opacity=options.overlay_opacity
            )
            row.update(stats, status="ok")
            row["seconds"] = round(time.perf_counter() - start - waited, 4)
        except OSError as e:  # the output side: a full disk stops the batch, other write errors fail this image
            row.update(status="failed", error=one_line(e), fingerprint=None)
            if e.errno in DISK_FULL:
                row.update(
                    error=f"the output disk is full ({e.strerror or e}); free space and run again", stop="disk full"
                )
        except Exception as e:  # one bad file must never stop the batch: record the reason and go on
            row.update(status="failed", error=one_line(e))
            if not isinstance(e, ImageError) or isinstance(e, ResourceError):
                row["fingerprint"] = None  # not the input's fault: retried next time
            else:  # the input's: not retried until it, or what the failure depended on, changes
                if row.get("fingerprint") is None:  # refused before it was read whole
                    row["fingerprint"] = _failed_fingerprint(image_path, before)
                with contextlib.suppress(OSError):
                    row["settings"] = failure_key(options, segmenter.model_sha256 or "", paths)
        if row.get("seconds") is None:
            row["seconds"] = round(time.perf_counter() - start, 4)
        return ImageRow.from_dict(self.with_review(row))

    def with_review(self, row: Row) -> Row:
        """``row`` with its ``review`` flag at this run's threshold (``options.review_below``, else the model's): a
        skipped image's estimate, recorded when it was segmented, is judged again by the threshold of today."""
        from skinseg.runtime.quality import needs_review

        quality = self.segmenter.quality
        if row.get("status") in ("ok", "skipped") and row.get("quality") is not None and quality is not None:
            below = self.options.review_below if self.options.review_below is not None else quality.review_below
            row["review"] = needs_review(row["quality"], below)
        return row


def no_work_row(
    model_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    options: InferOptions,
    output_root: str | os.PathLike[str],
    rel_path: str | PurePosixPath,
    *,
    previous: Row | None = None,
) -> ImageRow | None:
    """What :func:`process_image` would return without segmenting (``skipped``, or ``failed`` before and
    unchanged), or None when the image needs work: the check a cluster's client makes before submitting a task."""
    job = ImageJob(model_path, image_path, options, output_root, rel_path, previous=previous)
    try:
        done = job.no_work()
        return None if done is None else ImageRow.from_dict(job.with_review(done))
    except (ImageError, OSError):
        return None  # the task says why


def process_image(
    model_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    options: InferOptions,
    output_root: str | os.PathLike[str],
    rel_path: str | PurePosixPath,
    *,
    on_tile: Callable[[int, int], None] | None = None,
    previous: Row | None = None,
) -> ImageRow:
    """Segment one image file and write its outputs under ``output_root``; return its report row.

    The row is an :class:`~skinseg.runtime.records.ImageRow` (the columns of ``results.csv``); ``status`` is
    ``ok``, ``skipped`` (outputs up to date and not ``options.overwrite``) or ``failed`` with a one-line ``error``.
    ``previous`` is the image's row of an earlier run (from ``results.csv``): an unchanged input that failed then
    fails again without being retried (the row has ``retried`` False). Never raises for a bad image or a failed
    write (a full disk marks the row ``stop``); a model that cannot be loaded, or that changed since
    ``options.model_sha256``, raises
    :class:`ModelError` (nothing can succeed then).
    """
    job = ImageJob(model_path, image_path, options, output_root, rel_path, previous=previous)
    return job.run(on_tile=on_tile)
