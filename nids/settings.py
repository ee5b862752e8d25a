"""All runtime configuration in one place: environment variables prefixed NIDS_ (or a .env file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nids.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME


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

    # --- data directory (audit log, state) ------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="where the service keeps its own state")

    # --- self-healing (docs/self-healing.md) ------------------------------------------------------------
    healing_policy_file: Path = Field(Path("config/healing.yaml"), description="attack type -> action policy")
    healing_audit_url: str | None = Field(
        None, description="sqlite:///path or postgresql://...; default: SQLite file healing-audit.sqlite3 in data_dir"
    )
    healing_audit_table_prefix: str = Field("healing_", description="prefix of the audit tables")
    healing_enforcement_stopped: bool = Field(False, description="stop switch: nothing is enforced while true")
    healing_own_addresses: list[str] = Field(
        default_factory=list, description="the service's own addresses (never blocked); the host name's are added"
    )

    @field_validator("threat_model_tag", "attack_model_tag")
    @classmethod
    def _tag_has_name(cls, tag: str) -> str:
        name, _, version = tag.partition(":")
        if not name or (":" in tag and not version):
            raise ValueError(f"model tag {tag!r} must look like 'name' or 'name:version'")
        return tag
