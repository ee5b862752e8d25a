# The retraining job's image (issue 21): the training code, its `train` extra and the committed data; never served.
#   docker build -f deploy/retrain.Dockerfile -t nids-train:latest .
#   docker run --rm -e NIDS_PREDICTION_LOG_URL=... -e NIDS_MODEL_STATE_URL=... nids-train:latest --model attack
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nids nids
COPY training training
COPY config config
COPY data data
RUN pip install --no-cache-dir ".[train]" && useradd --uid 1035 --create-home retrain \
    && mkdir -p /var/lib/nids-train && chown retrain /var/lib/nids-train
USER retrain
ENV BENTOML_HOME=/var/lib/nids-train/bentoml
ENTRYPOINT ["python", "-m", "training.retrain"]
