"""The model families a tier can be: one small module each, mapped onto the shared encoder.

=============  ===========================================================  ====================
family         ``model_type``                                               head activation
=============  ===========================================================  ====================
bert           ``bert``                                                     tanh (pooler)
distilbert     ``distilbert``                                               relu (pre_classifier)
roberta        ``roberta``, ``xlm-roberta``, ``camembert``                  tanh
electra        ``electra``                                                  gelu
=============  ===========================================================  ====================
"""
from __future__ import annotations

from . import bert, distilbert, electra, roberta
from .base import Family, KeyMap

__all__ = ["Family", "KeyMap", "FAMILIES", "MODEL_TYPES", "family_of"]

FAMILIES: dict[str, Family] = {f.name: f for f in (bert.FAMILY, distilbert.FAMILY, roberta.FAMILY,
                                                   electra.FAMILY)}
#: ``config.json`` ``model_type`` -> family.
MODEL_TYPES: dict[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}


def family_of(model_type: str) -> Family:
    """The family that loads ``model_type``; ``KeyError`` naming the supported ones otherwise."""
    try:
        return MODEL_TYPES[model_type]
    except KeyError:
        raise KeyError(f"model_type {model_type!r} is not supported (one of {', '.join(MODEL_TYPES)})") from None
