"""facewatch's one typed configuration.

Sources, highest priority first: command-line flags, environment variables
(``FACEWATCH_<SECTION>__<KEY>``, e.g. ``FACEWATCH_DETECTOR__NAME=mmod``), a YAML file
(``--config FILE`` or ``$FACEWATCH_CONFIG``), then the defaults below. Unknown keys are errors
in every source. docs/configuration.md lists every key; ``facewatch config docs`` regenerates it.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.errors import ConfigError

ENV_PREFIX = "FACEWATCH_"
CONFIG_FILE_ENV = "FACEWATCH_CONFIG"
# Variables with the prefix that are not config keys but are read elsewhere, on purpose.
_OTHER_ENV = {"FACEWATCH_CONFIG", "FACEWATCH_MODEL_DIR"}


class Section(BaseModel):
    """A config section: strict about unknown keys and about types."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    dir: Path | None = Field(
        None,
        description="Folder holding dlib's model files. Default: the installed face_recognition_models "
        "package. FACEWATCH_MODEL_DIR is accepted as a shorthand.",
    )


class DetectorConfig(Section):
    name: Literal["hog", "mmod", "haar"] = Field(
        "hog",
        description="Face detector: hog (dlib HOG+SVM, CPU), mmod (dlib's CNN in torch, batched, GPU-capable), "
        "haar (OpenCV Viola-Jones).",
    )
    upsample: int = Field(
        1, ge=0, le=3, description="hog and mmod: double the image this many times first (finds smaller faces)."
    )
    min_score: float = Field(0.0, description="hog and mmod: drop detections scoring at or below this.")
    device: str = Field("auto", description="mmod: torch device (auto, cpu, cuda, cuda:N).")
    haar_cascade: Path | None = Field(None, description="haar: cascade XML file. Default: OpenCV's frontal face.")
    haar_min_neighbors: int = Field(5, ge=0, description="haar: neighbours a candidate needs to be kept.")
    haar_scale_factor: float = Field(1.1, gt=1.0, description="haar: scale step between pyramid levels.")
    min_face_size: int = Field(0, ge=0, description="Drop faces narrower than this many pixels (0: keep all).")


class LandmarksConfig(Section):
    points: Literal[5, 68] = Field(
        5,
        description="Landmark model: 5 (default, unrestricted) or 68 (trained on iBUG 300-W: "
        "NON-COMMERCIAL use only; needed for OpenFace alignment).",
    )


class EmbedderConfig(Section):
    device: str = Field("auto", description="torch device for the face network (auto: CUDA when available).")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="fp16 and bf16 only on CUDA.")
    max_batch: int = Field(64, ge=1, le=4096, description="Largest batch of chips in one forward pass.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: one per core).")


class ImagesConfig(Section):
    max_pixels: int = Field(64_000_000, ge=1, description="Reject decoded images larger than this many pixels.")


_yaml_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("facewatch_yaml", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Feeds the parsed YAML file (set by load_settings) to pydantic-settings."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


class Settings(BaseSettings):
    """Everything facewatch can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    models: ModelsConfig = Field(default_factory=ModelsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    landmarks: LandmarksConfig = Field(default_factory=LandmarksConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _check_env_names(environ: os._Environ[str] | dict[str, str]) -> None:
    sections = set(Settings.model_fields)
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in _OTHER_ENV:
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in sections:
            raise ConfigError(
                f"unknown environment variable {name}: no config section {section!r} "
                f"(sections: {', '.join(sorted(sections))})"
            )


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    value = error.get("input")
    shown = "" if error["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) else f" (got {value!r})"
    return f"{key}: {message}{shown}"


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from flags (``overrides``, nested dicts), env, the YAML file and defaults.

    Raises ConfigError naming the offending key.
    """
    path = config_file or os.environ.get(CONFIG_FILE_ENV) or None
    data = _read_yaml(Path(path)) if path else {}
    _check_env_names(os.environ)
    overrides = dict(overrides or {})
    if os.environ.get("FACEWATCH_MODEL_DIR") and "FACEWATCH_MODELS__DIR" not in os.environ:
        models = overrides.setdefault("models", {})
        models.setdefault("dir", os.environ["FACEWATCH_MODEL_DIR"])
    token = _yaml_data.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        where = f" (config file {path})" if path else ""
        raise ConfigError(f"invalid configuration{where}: {problems}") from None
    finally:
        _yaml_data.reset(token)
