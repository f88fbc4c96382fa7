"""The deploy kit's operator tools: ``nova deploy init`` and ``nova deploy check``.

Independent of the service (no app, storage or broker imports): it needs only the
``deploy`` extra (kubernetes-validate, PyYAML) and ``kubectl`` (or ``kustomize``).
"""

from nova.deploy.check import Problem, check_overlay
from nova.deploy.manifests import build_overlay, validate_documents
from nova.deploy.params import InitResult, init_overlay

__all__ = [
    "InitResult",
    "Problem",
    "build_overlay",
    "check_overlay",
    "init_overlay",
    "validate_documents",
]
