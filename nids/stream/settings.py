"""The stream worker's connection to Kafka, from the one settings object (nids.core.settings.Settings).

NIDS_KAFKA_* say where the Kafka cluster and the topics are and how to reach them; NIDS_STREAM_* shape the
worker's batches, back-pressure, metrics and whether its events may be enforced.
"""

from __future__ import annotations

from typing import Any

from nids.core.settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options common to aiokafka's consumer and producer."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options
