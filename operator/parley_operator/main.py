"""The module ``kopf run`` loads: registers the handlers in kopf's default registry.

kopf run -m parley_operator.main --all-namespaces --liveness=http://0.0.0.0:8080/healthz
"""

from __future__ import annotations

import kopf

from parley_operator.handlers import OperatorOptions, register

register(kopf.get_default_registry(), OperatorOptions.from_env())
