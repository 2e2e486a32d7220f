"""The options of a segmentation and of a batch, each declared once with its default.

:class:`SegmentOptions` shapes a :class:`~skinseg.runtime.segmenter.Segmenter` (``skinseg infer`` and ``skinseg
evaluate`` both take them); :class:`InferOptions` is those options plus what a batch does with each image (which
outputs, the overlay's look, memory and reruns). ``None`` means the model's own setting (from its metadata). The CLI
builds them from its flags (``skinseg.flags``); ``tests/test_options.py`` checks that the flags and these fields
agree, names and defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from skinseg.runtime.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_OVERLAP,
    DEFAULT_OVERLAY_COLOR,
    DEFAULT_OVERLAY_OPACITY,
    DEFAULT_OVERLAY_SIZE,
)
from skinseg.runtime.errors import ParameterError, param

__all__ = ["InferOptions", "SegmentOptions"]


@dataclass(frozen=True)
class SegmentOptions:
    """How a model segments an image (:class:`~skinseg.runtime.segmenter.Segmenter` documents each option).

    ``tile`` is one size or ``(height, width)``; ``scale`` a :class:`~skinseg.runtime.metadata.Scale` or its text
    form (``native``, ``tile``, ``0.25``, ``1024``, ``short:256``).
    """

    device: str = "auto"
    threads: int | None = None
    tile: Any = None  # int | (height, width) | None: the model's
    scale: Any = None  # Scale | str | float | None: the model's
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
    threshold: float | None = None
    keep_largest: bool | None = None
    fill_holes: bool | None = None
    tta: bool | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def of(cls, options: SegmentOptions | None = None, **changes: Any) -> SegmentOptions:
        """``options`` (default: all defaults) with ``changes``; TypeError names an option that does not exist."""
        base = SegmentOptions() if options is None else options
        values = {f.name: getattr(base, f.name) for f in fields(SegmentOptions)}
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise TypeError(f"unknown segmentation option(s): {', '.join(unknown)}")
        return SegmentOptions(**{**values, **changes})

    @property
    def segment(self) -> SegmentOptions:
        """Just the segmentation options (an :class:`InferOptions` has more)."""
        return SegmentOptions.of(self)

    def as_kwargs(self) -> dict[str, Any]:
        """The options by name, in their declared order."""
        return {f.name: getattr(self, f.name) for f in fields(SegmentOptions)}

    def check(self) -> None:
        """UsageError for an option that makes no sense, before any work."""
        from skinseg.runtime.metadata import Scale
        from skinseg.runtime.segmenter import check_options
        from skinseg.runtime.tiling import parse_tile

        check_options(threads=self.threads, overlap=self.overlap, batch_size=self.batch_size, threshold=self.threshold)
        if self.tile is not None:
            parse_tile(self.tile)
        if self.scale is not None and not isinstance(self.scale, Scale):
            try:
                Scale.parse(self.scale)
            except ValueError as e:
                raise ParameterError(f"{param('scale')}: {e}") from None


@dataclass(frozen=True)
class InferOptions(SegmentOptions):
    """What `skinseg infer` does to each image: the :class:`SegmentOptions`, then the batch's own options.

    ``overlay_size``: the overlay's long side in px (``None``: the photo's full size); ``memory_limit`` (bytes)
    and ``max_in_flight`` bound the images worked on at once; ``model_sha256`` is set when the batch
    pins its model (:meth:`~skinseg.runtime.model_cache.ModelCache.pin`) to the model it loaded, so every image of
    a run, on any machine, is segmented by that model or fails.
    """

    save_prob: bool = False
    contours: bool = False
    overwrite: bool = False
    overlay_size: int | None = DEFAULT_OVERLAY_SIZE
    retry_failed: bool = False
    memory_limit: int | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    overlay_color: tuple[int, int, int] = DEFAULT_OVERLAY_COLOR
    overlay_opacity: float = DEFAULT_OVERLAY_OPACITY
    review_below: float | None = None  # flag masks whose quality estimate is below it; None: the model's threshold
    model_sha256: str | None = None

    @classmethod
    def of(cls, segment: SegmentOptions | None = None, **batch: Any) -> InferOptions:  # type: ignore[override]
        """The batch options ``batch`` over the segmentation options ``segment``."""
        base = {} if segment is None else segment.segment.as_kwargs()
        return InferOptions(**base, **batch)

    def check(self) -> None:
        """UsageError for an option that makes no sense, before any work."""
        super().check()
        if self.review_below is not None and not 0.0 <= self.review_below <= 1.0:
            raise ParameterError(f"{param('review_below')} must be a Jaccard within [0, 1], got {self.review_below!r}")
        if self.max_in_flight < 1:
            raise ParameterError(f"{param('max_in_flight')} must be a positive integer, got {self.max_in_flight!r}")
        if not 0.0 <= self.overlay_opacity <= 1.0:
            raise ParameterError(f"{param('overlay_opacity')} must be within [0, 1], got {self.overlay_opacity!r}")
        if len(self.overlay_color) != 3 or not all(0 <= int(c) <= 255 for c in self.overlay_color):
            raise ParameterError(
                f"{param('overlay_color')} must be three values from 0 to 255, got {self.overlay_color!r}"
            )

    def output_settings(self) -> dict[str, Any]:
        """The options that change an image's outputs (recorded in every output and in the settings stamp).

        Not the ones that only change the speed or memory (``device``, ``threads``, ``batch_size``,
        ``memory_limit``, ``max_in_flight``), which images are refused (``max_pixels``), nor ``overwrite`` and
        ``retry_failed``.
        """
        kwargs = self.as_kwargs()
        for key in ("device", "threads", "batch_size", "max_pixels"):
            del kwargs[key]
        kwargs.update(save_prob=self.save_prob, contours=self.contours, overlay_size=self.overlay_size)
        style = (tuple(self.overlay_color), self.overlay_opacity)
        if style != (DEFAULT_OVERLAY_COLOR, DEFAULT_OVERLAY_OPACITY):  # only when set: earlier outputs stay current
            kwargs.update(overlay_color=list(style[0]), overlay_opacity=style[1])
        return kwargs

    def settings(self, model_sha256: str) -> str:
        """The digest every output records: the model and :meth:`output_settings`."""
        from skinseg.runtime.outputs import settings_digest

        return settings_digest(model_sha256, self.output_settings())
