"""``python -m parley_operator``: the operator as the container runs it.

Watches every namespace, or only PARLEY_OPERATOR_NAMESPACES (comma-separated),
and serves kopf's liveness probe on PARLEY_OPERATOR_LIVENESS
(default http://0.0.0.0:8080/healthz).
"""

from __future__ import annotations

import asyncio
import os

import kopf

from parley_operator.handlers import OperatorOptions, register


def main() -> None:
    # The default registry already holds kopf's own login handlers (service
    # account in the cluster, else the kubeconfig).
    registry = kopf.get_default_registry()
    register(registry, OperatorOptions.from_env())
    namespaces = [n for n in os.environ.get("PARLEY_OPERATOR_NAMESPACES", "").split(",") if n]
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            # One operator per cluster (the chart runs one replica with a Recreate
            # strategy), so no peering objects are needed.
            standalone=True,
            liveness_endpoint=os.environ.get(
                "PARLEY_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"
            ),
        )
    )


if __name__ == "__main__":
    main()
