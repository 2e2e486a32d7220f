"""The training recipes (``*.config``), shipped with skinseg for `skinseg config init`."""
