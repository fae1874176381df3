"""The Parley operator: reconciles ParleyRegion resources into a running region.

The builders (``crds``, ``manifests``, ``topology``, ``scaling``, ``status``)
are pure functions of the resource; ``handlers`` wires them to kopf and
``kube`` is the only module that talks to the Kubernetes API.
"""

GROUP = "parley.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
REGION_KIND = "ParleyRegion"
REGION_PLURAL = "parleyregions"
