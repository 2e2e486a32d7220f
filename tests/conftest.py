"""Test-wide settings: quiet TensorFlow, one intra-op thread per worker (the suite runs 2 workers on 2 cores)."""

import os

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


@pytest.fixture
def images_in_flight(monkeypatch):
    """``peak``: a one-item list holding the most images inside ``process_image`` at once during the test (each call
    held 50 ms so that overlapping ones overlap); set ``peak[0] = 0`` to measure again."""
    import threading
    import time

    import skinseg.runtime.job as batch

    lock, active, peak = threading.Lock(), [0], [0]
    real = batch.process_image

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(batch, "process_image", counting)
    return peak
