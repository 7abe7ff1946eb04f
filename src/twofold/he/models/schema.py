"""The public part every model's schema shares: features, label and classes, with one JSON form."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

from twofold.errors import InputError

S = TypeVar("S", bound="ClassSchema")


@dataclass(frozen=True)
class ClassSchema:
    """Public model description: feature names, the label column and its classes (subclasses add their own
    public parameters, e.g. bin edges or a standardization)."""

    MODEL: ClassVar[str] = ""

    features: list[str]
    label: str
    classes: list[str]

    def class_index(self, value: str) -> int:
        try:
            return self.classes.index(str(value))
        except ValueError:
            raise InputError(f"label {value!r} is not one of the schema's classes") from None

    def to_json(self) -> str:
        return json.dumps({"model": self.MODEL, **asdict(self)}, indent=1)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def _fields(cls, doc: dict[str, Any]) -> dict[str, Any]:
        """Typed constructor arguments from a parsed JSON document (subclasses add theirs)."""
        return {"features": [str(f) for f in doc["features"]], "label": str(doc["label"]),
                "classes": [str(c) for c in doc["classes"]]}

    @classmethod
    def from_dict(cls: type[S], doc: dict[str, Any]) -> S:
        try:
            return cls(**cls._fields(doc))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed {cls.MODEL} schema: {exc}") from None
