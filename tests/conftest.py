"""Test-wide settings: quiet TensorFlow, one intra-op thread per worker (the suite runs 2 workers on 2 cores)."""

import os
import threading

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def standin_model(tmp_path_factory):
    """A stand-in ONNX model (64×64 tiles, native scale) whose mask is ``red > 127`` (tests.onnx_standins)."""
    from tests.onnx_standins import identity_model, metadata_json, save

    return save(identity_model(metadata=metadata_json((64, 64))), tmp_path_factory.mktemp("standin") / "m.onnx")


class InFlight:
    """The images inside ``process_image`` at once during a test (the ``images_in_flight`` fixture).

    ``peak``: the most at once so far. No assertion rests on timing: with ``reset(crowd=n)``, an image that enters
    waits (up to a minute) until ``n`` are in flight together, so a run that may hold ``n`` reaches a peak of ``n`` on
    any machine, however loaded; with ``crowd=1`` (the default) an image stays in for a moment or until a second one
    enters, whichever comes first, so that one admitted wrongly is caught overlapping and a right run is not slowed.
    """

    PATIENCE_S = 60.0  # how long a crowd of n may take to form before the test gives up on it (a failure, not a hang)
    WINDOW_S = 0.05  # how long one image alone stays in, for a wrongly admitted second one to show

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.active = 0
        self.peak = 0
        self.crowd = 1
        self._formed = False

    def reset(self, crowd: int = 1) -> None:
        """Measure again from zero; from now on images wait for ``crowd`` of them to be in flight together."""
        with self._cond:
            self.peak, self.crowd, self._formed = 0, crowd, False

    def wrap(self, real):
        def counting(*args, **kwargs):
            with self._cond:
                self.active += 1
                self.peak = max(self.peak, self.active)
                if self.active >= self.crowd > 1:
                    self._formed = True
                self._cond.notify_all()
                if self.crowd > 1:
                    self._cond.wait_for(lambda: self._formed, timeout=self.PATIENCE_S)
                else:
                    self._cond.wait_for(lambda: self.active > 1, timeout=self.WINDOW_S)
            try:
                return real(*args, **kwargs)
            finally:
                with self._cond:
                    self.active -= 1
                    self._cond.notify_all()

        return counting


@pytest.fixture
def images_in_flight(monkeypatch) -> InFlight:
    """Counts the images inside ``skinseg.runtime.job.process_image`` at once (see ``InFlight``)."""
    import skinseg.runtime.job as batch

    in_flight = InFlight()
    monkeypatch.setattr(batch, "process_image", in_flight.wrap(batch.process_image))
    return in_flight


@pytest.fixture
def model(standin_model):
    """The stand-in model under the name most batch tests use (a module may define its own ``model``)."""
    return standin_model
