"""The base of the typed stage configs: :class:`~duolib.train.config.TrainConfig`,
:class:`~duolib.oracle.config.OracleConfig`, :class:`~duolib.router.config.RouterConfig` and
:class:`~duolib.book.config.BookConfig`.

Each is a dataclass whose fields are one section of a profile (:data:`duolib.profiles.PROFILES`, plain
data), filled by ``XConfig.from_profile(name, **overrides)``: the profile's section, then the overrides
that are not None (a command's flags, a notebook's parameters), then ``validate()``, the one place where
that stage's values are checked (with :mod:`duolib.checks`).  Every ``duo`` stage command builds its config
this way and hands it to its stage's entry point."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, TypeVar

from .profiles import get_profile

C = TypeVar("C", bound="StageConfig")


class StageConfig:
    """Mixin for a dataclass with a ``profile`` field; ``SECTION`` names its profile section."""

    SECTION: ClassVar[str]

    @classmethod
    def from_profile(cls: type[C], profile: str = "default", **overrides) -> C:
        """Profile ``profile``'s section, then the non-None ``overrides``, validated; ValueError naming an
        unknown field or a bad value."""
        names = {f.name for f in dataclasses.fields(cls)} - {"profile"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {sorted(names)}")
        section = get_profile(profile)[cls.SECTION]
        stray = sorted(set(section) - names)
        if stray:  # the profile is data this class reads: a key it does not know is a typo there
            raise ValueError(f"profile {profile!r} section {cls.SECTION!r} has unknown key(s) {stray}; "
                             f"{cls.__name__} fields: {sorted(names)}")
        values = {**section, **{k: v for k, v in overrides.items() if v is not None}}
        config = cls(profile=profile, **values)
        config.validate()
        return config

    def replace(self: C, **changes) -> C:
        """A copy with ``changes`` (not validated: a caller may change several fields in turn)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:  # pragma: no cover - every stage config defines its own
        raise NotImplementedError
