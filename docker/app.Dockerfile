# dualflower on Flower 1.39.0: one Dockerfile, two images (see compose.yaml).
#   BASE_IMAGE=flwr/superlink:1.39.0  -> SuperLink that runs the ServerApp (subprocess isolation)
#   BASE_IMAGE=flwr/supernode:1.39.0  -> SuperNode that runs the ClientApp
#   TORCH_INDEX_URL=.../whl/cpu (default) or .../whl/cu130 (CUDA variant, with-gpu.yaml)
# The app code also arrives in each run's FAB; installing it here provides its dependencies
# and `python -m deploy` (certificates, key registration). The Flower images run as uid 49999.
ARG BASE_IMAGE=flwr/supernode:1.39.0
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        torch==2.14.1 torchvision==0.29.1
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app server_app ./server_app
COPY --chown=app:app client_app ./client_app
COPY --chown=app:app strategies ./strategies
COPY --chown=app:app tasks ./tasks
COPY --chown=app:app deploy ./deploy
RUN python -m pip install --no-cache-dir . && mkdir -p /app/data /app/state /app/outputs
