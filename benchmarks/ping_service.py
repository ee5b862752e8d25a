"""A BentoML service with only the proposed no-model `ping` API, to develop the served benchmark on.

`bentoml serve benchmarks.ping_service:PingService`. The figures in BENCHMARKS.md come from the `ping` API of
NIDSService itself (same process as the model APIs); this file only exists to exercise the harness without
models.
"""

from __future__ import annotations

from typing import Any

import bentoml
from pydantic import BaseModel, Field


class PingReply(BaseModel):
    flows: int = Field(description="how many flows the request carried")


@bentoml.service(name="nids-ping")
class PingService:
    @bentoml.api
    def ping(self, flows: list[dict[str, Any]]) -> PingReply:
        """No model: the cost of HTTP, JSON and BentoML dispatch alone (the serving ceiling)."""
        return PingReply(flows=len(flows))
