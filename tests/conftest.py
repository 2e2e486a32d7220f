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
