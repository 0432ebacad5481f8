# dualflower on Flower 1.39.0: one image for the SuperLink (it runs the ServerApp) and the
# SuperNodes (they run the ClientApps); compose.yaml sets each service's entrypoint.
#
# The base is Flower's Ubuntu SuperNode image with Python 3.11 (the bare tag 1.39.0 is Alpine
# with Python 3.13: no torch wheels for musl, and outside requires-python; the SuperLink has no
# Ubuntu tag with Python 3.11, but the SuperNode image ships every flwr command). Flower's images
# run as user app (uid 49999), HOME=/app, with flwr in the venv /python/venv.
#
# Build arguments (all optional; unset, the build fetches from the public indexes):
#   BASE_IMAGE                          Flower base image (an offline stand-in: docker/standin.Dockerfile)
#   TORCH_INDEX_URL                     index for torch/torchvision (CPU by default; with-gpu.yaml: cu130)
#   TORCH_VERSION, TORCHVISION_VERSION  override pyproject's torch pins (e.g. 2.13.0+cpu 0.28.0)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, PIP_TRUSTED_HOST
#                                       pip's own options (offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=<wheelhouse>)
# Dependencies are installed from pyproject.toml before the code is copied: a code change
# rebuilds only the last layer (seconds, no network).
ARG BASE_IMAGE=flwr/supernode:1.39.0-py3.11-ubuntu24.04
FROM ${BASE_IMAGE}
LABEL dualflower.image=app
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=
ARG TORCHVISION_VERSION=
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=
ARG PIP_TRUSTED_HOST=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY --chown=49999:49999 docker/requirements.py pyproject.toml /tmp/dualflower/
RUN cd /tmp/dualflower \
    && python requirements.py pyproject.toml torch "${TORCH_VERSION}" "${TORCHVISION_VERSION}" > torch.txt \
    && python -m pip install --index-url "${TORCH_INDEX_URL}" -r torch.txt
RUN cd /tmp/dualflower \
    && python requirements.py pyproject.toml rest > rest.txt \
    && python -m pip freeze | grep -i -E '^torch(vision)?==' > installed.txt \
    && python -m pip install -c installed.txt -r rest.txt hatchling \
    && mkdir -p /app/data /app/state /app/outputs /app/certificates /app/keys /app/ca
COPY --chown=49999:49999 . /tmp/dualflower/src
RUN python -m pip install --no-deps --no-build-isolation /tmp/dualflower/src
