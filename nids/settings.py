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

    # --- data directory (audit log, state) ------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="where the service keeps its own state")

    @field_validator("threat_model_tag", "attack_model_tag")
    @classmethod
    def _tag_has_name(cls, tag: str) -> str:
        name, _, version = tag.partition(":")
        if not name or (":" in tag and not version):
            raise ValueError(f"model tag {tag!r} must look like 'name' or 'name:version'")
        return tag


def get_settings() -> Settings:
    return Settings()
