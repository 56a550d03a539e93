"""``GET /api/v1/registry/capabilities``: Quay's answer telling clients (its UI, scripts) whether sparse indexes
are on, so that they offer the architecture filter only when the server honours it. Anonymous, as Quay's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.mirror.models import VALID_ARCHITECTURES
from quaymirror.mirror.schemas import RegistryCapabilitiesView
from quaymirror.openapi import Operation


class RegistryCapabilities(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getRegistryCapabilities",
                         "Whether sparse indexes (the mirror's architecture filter) are on, and the architectures "
                         "a mirror may filter on. No authentication.", "",
                         {200: RegistryCapabilitiesView}, tags=("mirror",)),
    }

    def get(self) -> dict[str, Any]:
        # Every architecture is optional (none is required in a sparse index), as soon as the feature is on.
        enabled = web.settings().feature_sparse_index
        return RegistryCapabilitiesView().dump({
            "sparse_manifests": {"supported": enabled, "required_architectures": [],
                                 "optional_architectures_allowed": enabled},
            "mirror_architectures": sorted(VALID_ARCHITECTURES),
        })


def register(api: Api) -> None:
    api.add_resource(RegistryCapabilities, "/registry/capabilities", endpoint="registry_capabilities")
