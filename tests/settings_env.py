"""The environment names a pydantic-settings class reads (used by the compose and k8s tests)."""

from __future__ import annotations

import inspect

from pydantic import AliasChoices, AliasPath, BaseModel
from pydantic_settings import BaseSettings


def env_names(settings_class: type[BaseSettings]) -> dict[str, str]:
    """Every environment name the class reads (upper-cased unless case-sensitive) -> its field.

    Mirrors pydantic-settings: a field with a validation alias is read under the alias names
    only; any other field under env_prefix + field name. A nested settings object (a
    ``BaseModel`` field, e.g. ``kafka_security``) reads its own names and is left out.
    """
    config = settings_class.model_config
    prefix = config.get("env_prefix", "")
    case_sensitive = config.get("case_sensitive", False)
    names: dict[str, str] = {}
    for field_name, field in settings_class.model_fields.items():
        if inspect.isclass(field.annotation) and issubclass(field.annotation, BaseModel):
            continue
        alias = field.validation_alias or field.alias
        if alias is None:
            candidates = [f"{prefix}{field_name}"]
        elif isinstance(alias, str):
            candidates = [alias]
        elif isinstance(alias, AliasChoices):
            candidates = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, AliasPath):
            candidates = [str(alias.path[0])]
        else:  # pragma: no cover - pydantic has no other alias kinds
            raise TypeError(f"unexpected alias {alias!r} on {settings_class.__name__}.{field_name}")
        for name in candidates:
            names[name if case_sensitive else name.upper()] = field_name
    return names
