"""Rows and events read like the dicts they replace: the keys a row has are the keys it iterates."""

import pytest

from skinseg.runtime.records import ImageDone, ImageRow


def test_an_unset_extra_is_no_key_of_the_row():
    row = ImageRow(path="a.jpg", status="ok")
    assert "retried" not in row and "stop" not in row and "retried" not in list(row)
    assert row.get("retried") is None and row["status"] == "ok"
    with pytest.raises(KeyError):
        row["retried"]
    failed = ImageRow(path="b.jpg", status="failed", retried=False)
    assert "retried" in failed and failed["retried"] is False and "retried" in list(failed)
    assert dict(failed) == failed.to_dict()


def test_an_event_has_its_kind_under_event():
    done = ImageDone(index=0, done=1, total=1, row=ImageRow(path="a.jpg"))
    assert done["event"] == "image_done" and "event" in done and list(done)[0] == "event"
