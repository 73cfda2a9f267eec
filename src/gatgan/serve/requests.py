"""What the HTTP API accepts: request bodies, their ranges, and the server's per-request limits.

Bodies are parsed strictly (no "3" for 3, no true for 1, no unknown keys), so a typo in a
script fails with a message naming the field instead of silently using a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1  # as StyleGAN's scripts: every seed fits in 32 bits, whatever the client's integers
MAX_GUIDANCE = 10.0  # w-space guidance far above the paper's scales only extrapolates into noise
MAX_COLUMNS = 64

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ClassSpec = Annotated[int | str, Field(description="a class name (as GET /classes lists) or its index")]
Truncation = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False,
                                    description="1 = none, 0 = the class's mean style")]
Guidance = Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False, description="1 = none")]
Format = Literal["json", "png"]


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts. `max_images` bounds one request's generation (images, or
    interpolation frames), `max_waiting` the requests queued behind the one generating: beyond it a
    request is answered 503 at once instead of piling up."""

    max_images: int = 64
    max_body_bytes: int = 64 * 1024
    max_waiting: int = 16

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class GenerateRequest(_Body):
    """One image per seed, all of one class."""

    class_: ClassSpec = Field(alias="class")
    seeds: list[Seed] = Field(min_length=1)
    truncation: Truncation = 1.0
    guidance: Guidance = 1.0
    format: Format = Field("json", description="json: one base64 PNG per seed; png: one grid image")
    columns: int | None = Field(None, ge=1, le=MAX_COLUMNS, description="grid columns for format png")


class InterpolateRequest(_Body):
    """A walk from seed to seed for one class, `steps` frames per segment (shared ends once)."""

    class_: ClassSpec = Field(alias="class")
    seeds: list[Seed] = Field(min_length=2)
    steps: int = Field(8, ge=2, le=MAX_COLUMNS)
    truncation: Truncation = 1.0
    space: Literal["z", "w"] = "z"
    format: Format = "json"

    @property
    def frames(self) -> int:
        return (len(self.seeds) - 1) * (self.steps - 1) + 1
