"""Every setting vramgate has, in one place, with where each value may come from.

Precedence, highest first: values passed in code (tests, CLI flags) > ``VRAMGATE_*`` environment >
the TOML file (``--config FILE`` or ``VRAMGATE_CONFIG``) > Ollama's own ``OLLAMA_*`` variables for
the server settings both programs must agree on > defaults. The environment wins over the file so
that one shared file can be specialised per deployment (compose, systemd drop-ins).
``config/vramgate.toml`` documents each key.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from proxy.config.addresses import parse_listen, parse_ollama_host
from proxy.config.units import format_bytes, parse_bandwidth, parse_bytes

Bytes = Annotated[int, BeforeValidator(parse_bytes)]
Bandwidth = Annotated[float, BeforeValidator(parse_bandwidth)]
KvCacheType = Literal["f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]


class StaticGpu(BaseModel):
    """A GPU described by hand (``VRAMGATE_GPU=static``): demos, tests, machines without NVML."""

    model_config = ConfigDict(extra="forbid")  # a misspelt "fre" must not silently mean "all free"

    name: str
    total: Bytes
    free: Bytes | None = None  # defaults to total
    bandwidth: Bandwidth = 1.0e12
    uuid: str | None = None

    @model_validator(mode="after")
    def _free_within_total(self) -> StaticGpu:
        if self.free is not None and self.free > self.total:
            raise ValueError(
                f"free ({format_bytes(self.free)}) is larger than total ({format_bytes(self.total)}) for GPU "
                f"{self.name!r}: give free as at most total (what other programs leave free), or leave it out"
            )
        return self


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
    # --- what vramgate remembers across restarts (observed load sizes) ------------------------
    state_dir: Path | None = None  # unset: $XDG_STATE_HOME/vramgate, else ~/.local/state/vramgate

    # --- who is asking, and per-user policy -----------------------------------------------------
    policy_file: Path | None = None  # unset: every client gets the same rules (the settings above)
    tokens_file: Path | None = None  # sha256 of bearer tokens -> user (``vramgate token add``)
    identify_loopback: bool = True  # a loopback client is the Unix user owning its socket
    require_identity: bool = False  # refuse clients known only by their address (401)
    queue_timeout: float = Field(60.0, ge=0)  # seconds a load waits for room before 503; 0 = no queue
    max_queued: int = Field(4, ge=0)  # loads one user may have waiting at once (policy may set its own)

    # --- vramgate's own endpoints (/vramgate/...) ---------------------------------------------
    admin_token: str | None = None  # needed for /vramgate/* (but health) when listening beyond loopback

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
            raise ValueError(f"expected an http(s) URL such as https://registry.ollama.ai, got {value!r}")
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


CONFIG_ENV = "VRAMGATE_CONFIG"
# VRAMGATE_* variables that are not settings but are read elsewhere (the test oracle's cache and probe).
OTHER_ENV = frozenset({CONFIG_ENV, "VRAMGATE_CACHE", "VRAMGATE_PROBE_ALLOC"})
# The OLLAMA_* variable each server setting falls back to (OllamaEnvSource).
OLLAMA_ENV = {
    "num_parallel": "OLLAMA_NUM_PARALLEL",
    "kv_cache_type": "OLLAMA_KV_CACHE_TYPE",
    "flash_attention": "OLLAMA_FLASH_ATTENTION",
    "context_length": "OLLAMA_CONTEXT_LENGTH",
    "gpu_overhead": "OLLAMA_GPU_OVERHEAD",
    "origins": "OLLAMA_ORIGINS",
}
# How each list setting is written: (what it is, a JSON example for the environment, a TOML example).
LIST_FORMS = {
    "static_gpus": ("a list of objects", '[{"name": "RTX 4090", "total": "24GiB"}]',
                    '[{name = "RTX 4090", total = "24GiB"}]'),
    "origins": ("a list of strings", '["https://app.example.com"]', '["https://app.example.com"]'),
    "registry_hosts": ("a list of strings", '["registry.ollama.ai", "hf.co"]', '["registry.ollama.ai", "hf.co"]'),
}
# Error types that mean the shape is wrong (not one value), where an example of the shape helps.
_SHAPE_ERRORS = frozenset({"list_type", "model_type", "model_attributes_type", "dict_type", "missing",
                           "extra_forbidden", "string_type"})


def env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``VRAMGATE_*`` variable that is no setting (ignored), with the closest real name."""
    environ = os.environ if environ is None else environ
    known = {f"VRAMGATE_{name.upper()}" for name in Settings.model_fields} | OTHER_ENV
    out = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads the environment case-insensitively
        if not upper.startswith("VRAMGATE_") or upper in known:
            continue
        close = difflib.get_close_matches(upper.removeprefix("VRAMGATE_"), [k.removeprefix("VRAMGATE_") for k in known], n=1)
        hint = (f"did you mean VRAMGATE_{close[0]}?" if close
                else "the variables are VRAMGATE_<KEY> for each key in config/vramgate.toml")
        out.append(f"unknown environment variable {name} is ignored; {hint}")
    return out


class _Sources:
    """Which source a setting's value came from, to name it the way the user wrote it."""

    def __init__(self, path: str | None, from_file: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
        self.path = path
        self.from_file = from_file
        self.overrides = overrides
        self.env = {name.lower(): name for name in os.environ}
        self.ollama = OllamaEnvSource(Settings)()

    def kind(self, field: str) -> Literal["flag", "env", "file", "ollama", "default"]:
        """Mirrors the precedence of Settings.settings_customise_sources."""
        if field in self.overrides:
            return "flag"
        if f"vramgate_{field}" in self.env:
            return "env"
        if field in self.from_file:
            return "file"
        return "ollama" if field in self.ollama else "default"

    def name(self, field: str, suffix: str = "") -> str:
        kind = self.kind(field)
        if kind == "flag":
            return f"--{field.replace('_', '-')}{suffix}"
        if kind == "env":
            return self.env[f"vramgate_{field}"] + suffix
        if kind == "file":
            return f"{field}{suffix} (in {self.path})"
        if kind == "ollama":
            return OLLAMA_ENV.get(field, field) + suffix
        return f"{field}{suffix}"

    def shape_hint(self, field: str) -> str:
        what, json_example, toml_example = LIST_FORMS[field]
        if self.kind(field) == "file":
            return f"{field} must be {what} like {toml_example}"
        return f"{self.name(field)} must be a JSON {what.removeprefix('a ')} like {json_example}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from all sources; raise SettingsError with a one-line reason.

    A problem is named the way its value was given: ``--upstream`` for a value passed here (the
    command line's flags), ``VRAMGATE_UPSTREAM`` for the environment, ``upstream (in FILE)`` for
    the TOML file, ``OLLAMA_NUM_PARALLEL`` for Ollama's own variables.
    """
    path = str(config_file) if config_file else os.environ.get(CONFIG_ENV) or None
    from_file = _read_toml(path, "--config" if config_file else CONFIG_ENV) if path is not None else {}
    sources = _Sources(path, from_file, overrides)
    _check_env_json(sources)

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, sources)) from None
    except ValueError as exc:  # anything a source cannot parse that the checks above missed
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise SettingsError(f"cannot read settings: {exc}{cause}") from None
    settings = Settings.model_construct(**dict(loaded))
    _check_combinations(settings, sources)
    return settings


def _read_toml(path: str, named_by: str) -> dict[str, Any]:
    file = Path(path)
    if not file.exists():
        raise SettingsError(f"config file {path} does not exist: check {named_by}")
    if not file.is_file():
        raise SettingsError(f"config file {path} is not a file: check {named_by}")
    try:
        with file.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc).replace("(at line", "(line").replace("(at end of document)", "(at the end of the file)")
        raise SettingsError(f"cannot read settings file {path}: {message}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"cannot read settings file {path}: {reason}") from None


def _check_env_json(sources: _Sources) -> None:
    """List settings in the environment are JSON; say so, with the JSON error, before pydantic-settings does."""
    for field, info in Settings.model_fields.items():
        name = sources.env.get(f"vramgate_{field}")
        if get_origin(info.annotation) is not list or name is None:  # read even when a flag overrides it
            continue
        value = os.environ[name]
        try:
            json.loads(value)
        except ValueError as exc:
            what, example, _ = LIST_FORMS.get(field, ("a list", "[...]", ""))
            raise SettingsError(
                f"invalid setting {name}: {value!r} is not valid JSON ({exc}); "
                f"it must be a JSON {what.removeprefix('a ')} like {example}"
            ) from None


def _check_combinations(settings: Settings, sources: _Sources) -> None:
    if settings.gpu == "static" and not settings.static_gpus:
        kind, name = sources.kind("gpu"), sources.name("gpu")
        if kind == "file":
            fix = f'add e.g. static_gpus = {LIST_FORMS["static_gpus"][2]} to {sources.path}, or use gpu = "auto"'
        else:
            fix = f"set VRAMGATE_STATIC_GPUS to a JSON list like {LIST_FORMS['static_gpus'][1]}, or use " + (
                f"{name}=auto" if kind == "env" else 'gpu "auto"')
        raise SettingsError(f'invalid setting {sources.name("gpu")}: "static" needs at least one GPU in static_gpus; {fix}')


def _one_line(exc: ValidationError, sources: _Sources) -> str:
    err = exc.errors()[0]
    loc = err["loc"]
    top = str(loc[0]) if loc else ""
    suffix = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        close = difflib.get_close_matches(top, list(Settings.model_fields), n=1)
        hint = f"did you mean {close[0]}?" if close else "the settings are listed in config/vramgate.toml"
        where = sources.name(top) if top in sources.overrides else f"{top} (in {sources.path})"
        return f"unknown setting {where}; {hint}"
    where = sources.name(top, suffix) if top in Settings.model_fields else ".".join(map(str, loc)) or "settings"
    message = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if "input" in err and not isinstance(value, dict | list) and repr(value) not in message:
        message += f" (got {value!r})"
    if top in LIST_FORMS and err["type"] in _SHAPE_ERRORS:
        message += f"; {sources.shape_hint(top)}"
    return f"invalid setting {where}: {message}"
