"""All runtime configuration in one typed object: environment variables prefixed NIDS_ (or a .env file).

`get_settings()` reads them once per process and validates them at start: a bad value stops startup with a
message naming the variable. Every layer takes what it needs from this one object.
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyUrl, Field, SecretStr, UrlConstraints, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME

# sqlite:///relative/path, sqlite:////absolute/path or postgresql://user@host:port/database
DatabaseUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["sqlite", "postgresql", "postgres"])]


def sqlite_path(url: AnyUrl) -> Path:
    """The file of a sqlite:/// URL (three slashes: relative; four: absolute)."""
    return Path((url.path or "").removeprefix("/"))


# Inside a BentoML container (BENTOML_CONTAINERIZED=true) the state lives at an absolute path meant for a volume
# (`docker run -v nids-data:/var/lib/nids ...`), so the audit log and live blocks survive the container.
CONTAINER_DATA_DIR = Path("/var/lib/nids")


def default_data_dir() -> Path:
    """`var` (relative to the working directory) on a host; CONTAINER_DATA_DIR in a BentoML container."""
    return CONTAINER_DATA_DIR if os.environ.get("BENTOML_CONTAINERIZED", "").lower() == "true" else Path("var")


LogPriority = Literal["idle", "low", "normal"]  # of the prediction log's writer process (nids.observability.process)
CGROUP = Path("/sys/fs/cgroup")  # the container's own cgroup (v2: unified; v1: one folder per controller)
# one worker's share of a container's memory (NIDS_WORKER_MEMORY_MIB) and what the server holds besides its workers:
# measured in a container (BENCHMARKS.md, "Memory per worker"), with room for a 10,000-flow /analyze in every worker
WORKER_MEMORY_MIB = 720
SERVER_MEMORY_MIB = 128
_UNLIMITED = 2**60  # cgroup v1 reports "no limit" as a number near 2**63


def _cgroup_value(v2: str, v1: str) -> str | None:
    """The first line of a cgroup v2 file, else of its cgroup v1 equivalent; None where neither is readable."""
    for path in (CGROUP / v2, CGROUP / v1):
        try:
            return path.read_text().strip()
        except OSError:
            continue
    return None


def cpu_quota() -> float | None:
    """The cgroup's CPU quota in cores (`docker run --cpus 1.5`: 1.5); None without one."""
    fields = (_cgroup_value("cpu.max", "cpu/cpu.cfs_quota_us") or "max").split()  # v2 "quota period", v1 "quota"
    if fields[0] in ("max", "-1"):
        return None
    try:
        period = fields[1] if len(fields) > 1 else (CGROUP / "cpu" / "cpu.cfs_period_us").read_text()
        return int(fields[0]) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def memory_limit() -> int | None:
    """The cgroup's memory limit in bytes (`docker run --memory`, a Kubernetes memory limit); None without one."""
    value = _cgroup_value("memory.max", "memory/memory.limit_in_bytes")
    try:
        limit = int(value or "max")
    except ValueError:  # "max": no limit
        return None
    return limit if limit < _UNLIMITED else None


def usable_cores() -> int:
    """The cores this process may use: the CPUs it may run on, capped by a cgroup CPU quota (`docker run --cpus`),
    which os.cpu_count() ignores (a 1-CPU container on a 16-core host would start 16 workers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if (quota := cpu_quota()) is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def workers_for(cores: int, memory_bytes: int | None, worker_mib: int = WORKER_MEMORY_MIB) -> int:
    """One worker per core, no more than fit the memory limit (None: none) beside the server; at least 1. The
    rule deploy/kubernetes/nids.yaml's requests and limits follow."""
    if memory_bytes is None:
        return max(1, cores)
    return max(1, min(cores, (memory_bytes // 2**20 - SERVER_MEMORY_MIB) // worker_mib))


def default_workers(worker_mib: int = WORKER_MEMORY_MIB) -> int:
    """One worker per usable core (each scores on one ONNX thread; new connections go to the least loaded one),
    no more than fit the cgroup's memory limit: a worker killed for memory is lost capacity and dropped requests."""
    return workers_for(usable_cores(), memory_limit(), worker_mib)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NIDS_", env_file=".env", extra="ignore")

    # --- models -------------------------------------------------------------------------------------
    threat_model_tag: str = Field(f"{THREAT_MODEL_NAME}:latest", description="model-store tag served for threats")
    attack_model_tag: str = Field(f"{ATTACK_MODEL_NAME}:latest", description="model-store tag served for attacks")

    # --- request limits -----------------------------------------------------------------------------
    max_rows_per_request: int = Field(10_000, gt=0, description="rows above this are refused with 413")
    max_csv_bytes: int = Field(20 * 1024 * 1024, gt=0, description="uploaded CSV files above this get 413")
    max_rows_per_batched_request: int = Field(
        2_000, gt=0, description="rows above this get 413 on detect_threat/classify_attack (latency budget)"
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="JSON request bodies above this get 413 (10,000 spaced-name flows ~ 15 MB)"
    )

    # --- logging -------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="level of the nids.* loggers (refused requests are logged at INFO, without payload)"
    )

    # --- data directory (audit log, state) ------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir, description="where the service keeps its own state")

    # --- self-healing (docs/self-healing.md) ------------------------------------------------------------
    healing_policy_file: Path = Field(Path("config/healing.yaml"), description="attack type -> action policy")
    healing_audit_url: DatabaseUrl | None = Field(
        None, description="sqlite:///path or postgresql://...; default: SQLite file healing-audit.sqlite3 in data_dir"
    )
    healing_audit_table_prefix: str = Field("healing_", description="prefix of the audit tables")
    healing_enforcement_stopped: bool = Field(False, description="stop switch: nothing is enforced while true")
    healing_own_addresses: list[str] = Field(
        default_factory=list, description="the service's own addresses (never blocked); the host name's are added"
    )
    healing_unauthorised_events_per_minute: int = Field(
        20_000, gt=0, description="events a minute per caller not authorised to enforce (per worker); past it 429"
    )
    healing_unauthorised_events_per_request: int = Field(
        10_000, gt=0, description="events in one request of a caller not authorised to enforce; more: 429"
    )
    healing_audit_max_rows: int = Field(1_000_000, gt=0, description="retention: the newest decisions kept")
    healing_audit_max_age_days: float = Field(90.0, gt=0, description="retention: older decisions are deleted")
    healing_audit_prune_seconds: float = Field(60.0, gt=0, description="how often retention runs (in the background)")

    # --- model lifecycle (docs/models.md) --------------------------------------------------------------
    model_state_url: DatabaseUrl | None = Field(
        None,
        description="active versions, history and lifecycle audit: sqlite:///path or postgresql://...; default: "
        "NIDS_HEALING_AUDIT_URL when set, else the SQLite file model-lifecycle.sqlite3 in data_dir",
    )
    model_state_table_prefix: str = Field("lifecycle_", description="prefix of the lifecycle tables")
    model_sync_seconds: float = Field(1.0, gt=0, le=60, description="how often a worker polls the active versions")
    model_sync_deadline_seconds: float = Field(
        60.0, gt=0, description="a process not serving a recorded version this long after it saw it is unready"
    )
    replica_id: str | None = Field(
        None, max_length=200, description="this replica's id in the fleet status; default: host name:server pid"
    )
    shadow_queue_batches: int = Field(
        64, gt=0, le=100_000, description="answered batches waiting for the shadow model per worker; more are shed"
    )
    model_gate_margin: float = Field(
        0.01, ge=0, le=1, description="a candidate may score at most this much below the active version's metric"
    )
    model_signing_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of model packages; uploads and imports are refused without one"
    )
    model_max_package_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="model packages above this (compressed or unpacked) are refused with 413"
    )
    model_max_exports_per_minute: int = Field(
        6, gt=0, description="exports per minute and worker (each compresses a whole model); past it 429"
    )

    # --- access control (docs/api.md, "Access control") -----------------------------------------------
    admin_token: SecretStr | None = Field(None, description="bearer token of scope admin (label 'admin')")
    sensor_token: SecretStr | None = Field(None, description="bearer token of scope sensor (label 'sensor')")
    viewer_token: SecretStr | None = Field(None, description="bearer token of scope viewer (label 'viewer'): reads")
    tokens_file: Path | None = Field(
        None, description="YAML list of {label, scope: admin|sensor|viewer, sha256} for more tokens, hashed at rest"
    )
    auth_mode: Literal["auto", "open", "required"] = Field(
        "auto",
        description="open: no token reads as a viewer (loopback development only); required: only public routes "
        "answer without a token; auto: open when bound to loopback outside a container, else required",
    )
    metrics_public: bool = Field(True, description="/metrics answers without a token (false: viewer scope)")

    # --- observability: prediction log, live stream, drift (docs/observability.md) ---------------------
    prediction_log_enabled: bool = Field(True, description="record every prediction (statistics, live stream, drift)")
    prediction_log_url: DatabaseUrl | None = Field(
        None, description="sqlite:///path or postgresql://...; default: SQLite file predictions.sqlite3 in data_dir"
    )
    prediction_log_table_prefix: str = Field("nids_", description="prefix of the prediction-log tables")
    prediction_log_queue_rows: int = Field(100_000, gt=0, description="rows waiting to be written; more are dropped")
    prediction_log_batch_rows: int = Field(1_000, gt=0, description="rows written per transaction")
    prediction_log_flush_seconds: float = Field(0.5, gt=0, description="longest a prediction waits to be written")
    prediction_log_priority: LogPriority = Field(
        "idle", description="CPU priority of the log's writer process: idle (runs on spare CPU only), low (nice 10)"
    )
    prediction_log_max_rows: int = Field(1_000_000, gt=0, description="retention: the newest rows kept")
    prediction_log_max_age_days: float = Field(30.0, gt=0, description="retention: rows older than this are deleted")
    realtime_ping_seconds: float = Field(30.0, gt=0, description="/ws/realtime sends a ping this often")
    realtime_poll_seconds: float = Field(0.25, gt=0, description="how often /ws/realtime reads new predictions")
    realtime_client_queue: int = Field(1_000, gt=0, description="events held per client; past it events are dropped")
    realtime_send_timeout_seconds: float = Field(10.0, gt=0, description="a client slower than this is cut off")
    realtime_max_clients: int = Field(100, gt=0, description="/ws/realtime clients per worker; past it refused 503")
    realtime_origins: list[str] = Field(
        default_factory=list,
        description="Origins besides the server's own whose pages may open /ws/realtime (e.g. https://soc.example)",
    )
    drift_window: int = Field(5_000, gt=0, description="recent predictions per model the drift is computed over")
    drift_min_rows: int = Field(100, gt=0, description="fewer recent rows than this: drift is not judged")
    drift_watch_psi: float = Field(0.1, gt=0, description="PSI from which a feature's status is 'watch'")
    drift_alert_psi: float = Field(0.25, gt=0, description="PSI from which a feature's status is 'drift'")
    drift_refresh_seconds: float = Field(15.0, gt=0, description="how often the drift gauges on /metrics are updated")

    # --- workers (issue 12): one process per core, ONNX on one thread each (BENCHMARKS.md, bulk and single flow) ---
    worker_memory_mib: int = Field(
        WORKER_MEMORY_MIB, gt=0, description="memory one worker may need: the default workers fit the memory limit"
    )
    workers: int = Field(
        default_factory=lambda data: default_workers(data.get("worker_memory_mib", WORKER_MEMORY_MIB)),
        gt=0,
        description="`bentoml serve` worker processes (default: one per usable core, as many as fit the container's "
        "memory limit at NIDS_WORKER_MEMORY_MIB each)",
    )

    # --- warm before ready (issue 23, nids.serving.warmup): /readyz 200 once every worker ran its paths -------------
    warm_up_requests: int = Field(
        64, ge=0, le=10_000, description="single-flow requests per batched API each worker sends itself before "
        "/readyz may answer 200 (0: no warm-up)"
    )  # fmt: skip

    # --- hardening (issue 12): a locked audit store answers 503 in time, never holds a request for long ---------
    healing_audit_lock_seconds: float = Field(
        5.0, gt=0, le=25, description="how long an audit write waits for a locked database before answering 503"
    )

    # --- stream ingestion (docs/stream.md): the Kafka cluster and topics --------------------------------
    kafka_bootstrap_servers: str = Field("localhost:9092", description="comma-separated host:port of brokers")
    kafka_topic: str = Field("network-traffic", description="flow records to score (JSON, one flow a message)")
    kafka_results_topic: str = Field("network-predictions", description="one prediction event per valid record")
    kafka_dlq_topic: str = Field("network-traffic.dlq", description="invalid records, as received, with the error")
    kafka_group_id: str = Field("nids-stream", description="consumer group: workers of one group share partitions")
    kafka_client_id: str = Field("nids-stream", description="client id the brokers see")
    kafka_auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group without committed offsets starts (earliest: nothing is skipped)"
    )
    kafka_session_timeout_ms: int = Field(
        10_000, gt=0, description="a worker silent this long is dropped from the group; its partitions move"
    )
    kafka_heartbeat_interval_ms: int = Field(3_000, gt=0, description="how often a worker tells the group it lives")
    kafka_acks: Literal["all", "1"] = Field("all", description="acknowledgement a produced result waits for")
    kafka_ack_timeout_ms: int = Field(
        30_000, gt=0, description="longest wait for the broker to acknowledge a result (then re-sent) or a commit"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle of the brokers' certificates (SSL, SASL_SSL)")

    # --- the worker -----------------------------------------------------------------------------------
    stream_batch_size: int = Field(1000, gt=0, description="most records scored together")
    stream_batch_wait_ms: int = Field(50, ge=0, description="longest a batch waits to fill before it is scored")
    stream_max_in_flight_batches: int = Field(
        4, gt=0, description="scored batches whose results may await the broker's acknowledgement at once"
    )
    stream_retry_seconds: float = Field(0.2, gt=0, description="first wait before a failed produce or audit write")
    stream_max_retry_seconds: float = Field(5.0, gt=0, description="longest wait between retries (doubling)")
    stream_metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus metrics port (0: none)")
    stream_enforce: bool = Field(
        False,
        description="the stream's events may trigger enforced actions (the sensor scope of the REST API); false: "
        "what would be enforced is recorded as dry_run with the reason 'caller not authorised to enforce'",
    )

    @field_validator("threat_model_tag", "attack_model_tag")
    @classmethod
    def _tag_has_name(cls, tag: str) -> str:
        name, _, version = tag.partition(":")
        if not name or (":" in tag and not version):
            raise ValueError(f"model tag {tag!r} must look like 'name' or 'name:version'")
        return tag

    @property
    def audit_url(self) -> AnyUrl:
        """The audit log's database: the configured URL, or the SQLite file in data_dir."""
        default = AnyUrl(f"sqlite:///{self.data_dir / 'healing-audit.sqlite3'}")
        return self.healing_audit_url or default

    @property
    def state_url(self) -> AnyUrl:
        """The lifecycle state's database: the configured URL, the audit log's, or a SQLite file in data_dir."""
        default = AnyUrl(f"sqlite:///{self.data_dir / 'model-lifecycle.sqlite3'}")
        return self.model_state_url or self.healing_audit_url or default

    @property
    def signing_key(self) -> bytes | None:
        """NIDS_MODEL_SIGNING_KEY as the HMAC key (None when not set)."""
        return self.model_signing_key.get_secret_value().encode() if self.model_signing_key else None

    @property
    def state_setting(self) -> str:
        """The variable that chose state_url (named in the reason when it cannot be opened)."""
        if self.model_state_url:
            return "NIDS_MODEL_STATE_URL"
        return "NIDS_HEALING_AUDIT_URL" if self.healing_audit_url else "NIDS_DATA_DIR"

    @property
    def prediction_log_database_url(self) -> AnyUrl:
        """The prediction log's database: the configured URL, or the SQLite file in data_dir."""
        return self.prediction_log_url or AnyUrl(f"sqlite:///{self.data_dir / 'predictions.sqlite3'}")


@cache
def get_settings() -> Settings:
    """The settings as read once per process (the request limits are read on the hot path)."""
    return Settings()
