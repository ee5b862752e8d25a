"""Settings of the stream worker: environment variables prefixed NIDS_ (or a .env file), like nids.settings.

NIDS_KAFKA_* say where the Kafka cluster and the topics are and how to reach them; NIDS_STREAM_* shape the
worker's batches, back-pressure and metrics. Everything the worker shares with the service (model tags, data
directory, self-healing) stays in nids.settings.Settings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NIDS_", env_file=".env", extra="ignore")

    # --- Kafka cluster and topics ---------------------------------------------------------------------
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

    def client_options(self) -> dict[str, Any]:
        """Connection options common to aiokafka's consumer and producer."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "client_id": self.kafka_client_id,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        if self.kafka_sasl_mechanism is not None:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            password = self.kafka_sasl_password
            options["sasl_plain_password"] = password.get_secret_value() if password else None
        return options
