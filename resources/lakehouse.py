"""Where the lakehouse lives: hands assets the Storage (all file access) and the symbol registry."""

from __future__ import annotations

from dagster import ConfigurableResource

from lakehouse.registry import Registry
from lakehouse.storage import Storage


class LakehouseResource(ConfigurableResource):
    """The Parquet lakehouse rooted at `root` (LAKEHOUSE_ROOT)."""

    root: str = "data"

    def storage(self) -> Storage:
        return Storage(self.root)

    def registry(self) -> Registry:
        return Registry(self.root)
