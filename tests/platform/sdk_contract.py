"""The SDK's methods found by walking the ``nemo-microservices`` client, and calls that check each answer
against the SDK's own response model (validated, not merely constructed, as the SDK does)."""

from __future__ import annotations

import inspect

from nemo_microservices import NeMoMicroservices
from nemo_microservices._resource import SyncAPIResource
from pydantic import BaseModel

# the client's resources the platform serves (NeMo's entity store, customizer, evaluator, deployments)
FAMILIES = ("namespaces", "projects", "datasets", "models", "customization", "evaluation", "deployment")


def _resources(resource: SyncAPIResource, path: str):
    yield path, resource
    for name, member in inspect.getmembers(type(resource)):
        if name.startswith(("_", "with_")) or not hasattr(member, "__get__") or inspect.isfunction(member):
            continue
        child = getattr(resource, name)
        if isinstance(child, SyncAPIResource):
            yield from _resources(child, f"{path}.{name}")


def sdk_methods(client: NeMoMicroservices) -> list[str]:
    """Every API method (``family.resource.method``) of the served families' resource classes: the
    methods each class defines itself, not helpers every resource inherits (``create_from_dict``)."""
    inherited = set(dir(SyncAPIResource))
    found = set()
    for family in FAMILIES:
        for path, resource in _resources(getattr(client, family), family):
            for name, _ in inspect.getmembers(type(resource), inspect.isfunction):
                if not name.startswith("_") and name not in inherited:
                    found.add(f"{path}.{name}")
    return sorted(found)


def resource_of(client: NeMoMicroservices, method: str):
    *path, name = method.split(".")
    resource = client
    for part in path:
        resource = getattr(resource, part)
    return resource, name


def validated(parsed, raw: dict | list):
    """``parsed`` (what the SDK built) validated as its own class from the wire's JSON: a field of the
    wrong type is a pydantic error here, where the SDK's lenient construction would keep it silently."""
    if isinstance(parsed, BaseModel):
        type(parsed).model_validate(raw)
        parsed.model_dump()  # a mistyped field warns here (an error under the module's filter)
        parsed.to_json()
    return parsed


class Caller:
    """Calls SDK methods by name through ``with_raw_response``, validating every JSON answer."""

    def __init__(self, client: NeMoMicroservices):
        self.client, self.called = client, set()

    def __call__(self, method: str, *args, **kwargs):
        resource, name = resource_of(self.client, method)
        self.called.add(method)
        raw = getattr(resource.with_raw_response, name)(*args, **kwargs)
        if raw.headers.get("content-type", "").startswith("application/json"):
            return validated(raw.parse(), raw.http_response.json())
        return raw  # a file (a zip): read it from the response
