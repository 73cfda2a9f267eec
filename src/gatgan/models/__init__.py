from .discriminator import Discriminator, stack_levels
from .generator import Generator
from .registry import MODEL_NAMES, MODEL_SIZES, build_discriminator, build_generator, parse_model_name

__all__ = [
    "Discriminator", "Generator", "MODEL_NAMES", "MODEL_SIZES", "build_discriminator", "build_generator",
    "parse_model_name", "stack_levels",
]
