# skinseg's runtime image: `skinseg infer` (also evaluate, model info, data prepare) on mounted folders, with the
# bundled model and onnxruntime on the CPU; no TensorFlow. tests/test_container.py builds and runs it.
#
#   docker build -t skinseg .
#   docker run --rm --user "$(id -u):$(id -g)" -v /data/photos:/in:ro -v /data/masks:/out \
#       skinseg infer /in --recursive --output /out --quiet
#
# BASE: a Debian-like image with Python 3.10 or later and its venv module (python:3.11-slim unless told otherwise).
# The image runs as an unprivileged user and writes nothing but the --output folder (it runs with --read-only).
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies first, from pyproject.toml alone (a layer rebuilt only when it changes), then skinseg itself.
WORKDIR /deps
COPY pyproject.toml README.md ./
RUN mkdir -p skinseg_cli/commands runtime/models data exporters training configs \
    && echo '__version__ = "0"' > skinseg_cli/__init__.py \
    && python3 -m venv /opt/skinseg \
    && /opt/skinseg/bin/pip install --quiet '.[cpu]' \
    && /opt/skinseg/bin/pip uninstall --quiet --yes skinseg-edge \
    && cd / && rm -rf /deps
WORKDIR /src
COPY pyproject.toml README.md ./
COPY configs/ configs/
COPY runtime/ runtime/
COPY data/ data/
COPY exporters/ exporters/
COPY training/ training/
COPY skinseg_cli/ skinseg_cli/
RUN /opt/skinseg/bin/pip install --quiet --no-deps . \
    && cd / && rm -rf /src
WORKDIR /
ENV PATH=/opt/skinseg/bin:$PATH HOME=/tmp
USER 65534:65534
ENTRYPOINT ["skinseg"]
CMD ["--help"]
