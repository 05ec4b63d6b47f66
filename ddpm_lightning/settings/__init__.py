"""What a component's settings allow, declared once in its signature (`declared.py`): every
layer above reads it, the constructors to check their arguments, the config schema and the
configuration reference to describe them."""

from ddpm_lightning.settings.declared import (
    InChannels,
    NumClasses,
    NumTimesteps,
    OneOf,
    Range,
    Seed,
    Setting,
    check,
    checked,
    declared,
    is_number,
    setting_of,
    unified,
)

__all__ = [
    "InChannels",
    "NumClasses",
    "NumTimesteps",
    "OneOf",
    "Range",
    "Seed",
    "Setting",
    "check",
    "checked",
    "declared",
    "is_number",
    "setting_of",
    "unified",
]
