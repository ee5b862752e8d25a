"""The Bento's service module, at the top level as BentoML's convention has it: `bentoml serve service:NIDSService`.

The service itself lives in the serving package (nids/serving/service.py) with the routes, middleware and patches
it installs; this module names it for `bentofile.yaml`, `make serve` and the tests.
"""

from nids.serving.service import NIDSService

__all__ = ["NIDSService"]
