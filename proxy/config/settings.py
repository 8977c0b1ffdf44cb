"""Every setting vramgate has, in one place, with where each value may come from.

Precedence, highest first: values passed in code (tests, CLI flags) > ``VRAMGATE_*`` environment >
the TOML file (``--config FILE`` or ``VRAMGATE_CONFIG``) > Ollama's own ``OLLAMA_*`` variables for
the server settings both programs must agree on > defaults. The environment wins over the file so
that one shared file can be specialised per deployment (compose, systemd drop-ins).
``config/vramgate.toml`` documents each key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from proxy.config.addresses import parse_listen, parse_ollama_host
from proxy.config.units import parse_bandwidth, parse_bytes

Bytes = Annotated[int, BeforeValidator(parse_bytes)]
Bandwidth = Annotated[float, BeforeValidator(parse_bandwidth)]
KvCacheType = Literal["f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]


class StaticGpu(BaseModel):
    """A GPU described by hand (``VRAMGATE_GPU=static``): demos, tests, machines without NVML."""

    name: str
    total: Bytes
    free: Bytes | None = None  # defaults to total
    bandwidth: Bandwidth = 1.0e12
    uuid: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VRAMGATE_", extra="forbid", validate_default=True)

    # --- pass-through proxy -----------------------------------------------------------------
    upstream: str = "http://127.0.0.1:11434"
    listen: str = "127.0.0.1:11435"
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(0.0, ge=0)  # 0 = none: cold loads can take minutes
    probe_timeout: float = Field(5.0, gt=0)  # the gate's own questions to Ollama (/api/ps, /api/tags, ...)
    shutdown_grace: float = Field(15.0, ge=0)
    # --- limits on what a client may send (each breach is answered, in Ollama's JSON shape) ------
    max_request_line: int = Field(16384, ge=256)  # bytes; longer is 431 (as Go's head limit)
    max_header_size: int = Field(16384, ge=256)  # bytes per header field; larger is 431
    max_headers: int = Field(128, ge=8)  # header count; more is 431
    max_inspected_body: Bytes = 64 * 1024**2  # bodies the gate reads whole; larger is 413
    body_timeout: float = Field(30.0, gt=0)  # seconds between two reads of a request body; then 408
    keep_alive_timeout: float = Field(75.0, gt=0)  # an idle client connection is closed after this
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    origins: list[str] = Field(default_factory=list)  # extra CORS origins, like OLLAMA_ORIGINS

    # --- where GPU memory is read from --------------------------------------------------------
    gpu: Literal["auto", "nvml", "static", "none"] = "auto"
    static_gpus: list[StaticGpu] = Field(default_factory=list)
    on_no_gpu: Literal["refuse", "allow"] = "refuse"
    gpu_cache_ttl: float = Field(0.5, ge=0)

    # --- fit policy ---------------------------------------------------------------------------
    reserve: Bytes = 1024**3  # per GPU, like llama.cpp's default fit target
    cuda_context: Bytes = 500 * 1024**2  # per runner process per GPU, outside llama.cpp's buffers
    min_num_ctx: int = Field(2048, ge=256)
    evict_idle: bool = True
    allow_partial_offload: bool = False
    unload_on_spill: bool = False
    host_bandwidth: Bandwidth = 80e9  # system RAM, for the "if it spilled" speed estimate

    # --- pull gate ----------------------------------------------------------------------------
    registry: str = "https://registry.ollama.ai"
    registry_hosts: list[str] = ["registry.ollama.ai", "hf.co"]  # hosts other names may pull from
    pull_check_failure: Literal["allow", "refuse"] = "allow"

    # --- decision log -------------------------------------------------------------------------
    audit_file: Path | None = None

    # --- the Ollama server's own settings (also read from OLLAMA_*) -------------------------
    num_parallel: int = Field(1, ge=1)
    kv_cache_type: KvCacheType = "f16"
    flash_attention: Literal["auto", "on", "off"] = "auto"
    context_length: int = Field(0, ge=0)  # 0 = the upstream version's default rule
    gpu_overhead: Bytes = 0

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        return parse_ollama_host(value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value.strip()

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        sources.append(OllamaEnvSource(settings_cls))
        return tuple(sources)


class OllamaEnvSource(PydanticBaseSettingsSource):
    """Reads the OLLAMA_* variables that change how much memory a load takes."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        env = os.environ
        out: dict[str, Any] = {}
        if env.get("OLLAMA_NUM_PARALLEL", "").strip() not in ("", "0"):
            out["num_parallel"] = env["OLLAMA_NUM_PARALLEL"].strip()
        if env.get("OLLAMA_KV_CACHE_TYPE", "").strip():
            out["kv_cache_type"] = env["OLLAMA_KV_CACHE_TYPE"].strip().lower()
        fa = env.get("OLLAMA_FLASH_ATTENTION", "").strip().lower()
        if fa in ("1", "true", "on", "yes"):
            out["flash_attention"] = "on"
        elif fa in ("0", "false", "off", "no"):
            out["flash_attention"] = "off"
        if env.get("OLLAMA_CONTEXT_LENGTH", "").strip():
            out["context_length"] = env["OLLAMA_CONTEXT_LENGTH"].strip()
        if env.get("OLLAMA_GPU_OVERHEAD", "").strip():
            out["gpu_overhead"] = env["OLLAMA_GPU_OVERHEAD"].strip()
        origins = env.get("OLLAMA_ORIGINS", "").strip().strip("\"'")  # envconfig.Var, then Split
        if origins:
            out["origins"] = origins.split(",")
        return out


class SettingsError(Exception):
    """One line saying which setting is wrong and why; start-up prints it and exits."""


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from all sources; raise SettingsError with a one-line reason."""
    path = config_file or os.environ.get("VRAMGATE_CONFIG") or None
    if path is not None and not Path(path).is_file():
        raise SettingsError(f"config file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except ValueError as exc:  # TOML syntax errors, JSON in env vars
        raise SettingsError(f"cannot read settings: {exc}") from None
    return Settings.model_construct(**dict(loaded))


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "settings"
    top = str(err["loc"][0]) if err["loc"] else ""
    name = f"VRAMGATE_{top.upper()}" if top in Settings.model_fields else top
    where = f"{name} ({loc})" if loc != top else name
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"invalid setting {where}: {message}" + (
        f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    )
