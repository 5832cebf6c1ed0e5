"""One module per dataset: how to read (or make) it, and its ``DatasetInfo`` (what is known without reading it).

Every module here is imported, so a module's ``DATASETS.add(...)`` is all a new dataset needs
(docs/recipe-authoring.md, "Adding a dataset").
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
