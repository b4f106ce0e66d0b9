# syntax=docker/dockerfile:1
# One image for the operator (`depgate run`, the default command) and for the init containers it
# renders (`depgate wait <type> ...`, set as the container command by the operator).
#   docker build -t depgate/depgate:0.1.0 .
# Only pyproject.toml, requirements.lock and operator/ reach the build (.dockerignore).
# tests/unit/test_packaging.py repeats these steps (wheel, fresh venv, locked install) and runs the
# installed `depgate`, since the image itself cannot be built where the tests run.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY operator/ operator/
# The wheel alone, then the wheel into a venv with exactly the locked dependency versions, from
# binary wheels only (no compiler here, and no source distribution runs code at build time).
# pip checks the set, compiles the bytecode (the root filesystem is read-only at run time, and
# `depgate wait` starts faster), and then leaves the venv: nothing at run time installs anything.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/depgate \
 && /opt/depgate/bin/pip install --only-binary=:all: -c requirements.lock /wheels/depgate-*.whl \
 && /opt/depgate/bin/pip check \
 && /opt/depgate/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="depgate" \
      org.opencontainers.image.description="Gates Deployments on declared startup preconditions, one init container each." \
      org.opencontainers.image.licenses="Apache-2.0"
# The venv keeps its path (its scripts name /opt/depgate/bin/python) and its interpreter, which is
# the base image's, the same in both stages. Nothing else is added: the waiter's checks (TCP,
# Redis, HTTP, DNS, download, verdict) are Python's standard library, not shell tools.
COPY --from=build /opt/depgate /opt/depgate
ENV PATH=/opt/depgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The restricted Pod Security Standard wants a non-root user; a numeric one lets the kubelet verify
# runAsNonRoot without a passwd entry.
USER 65532:65532
ENTRYPOINT ["depgate"]
CMD ["run"]
