"""Data-set adapters for ``convirt data prepare``: name -> :class:`~convirt.data.adapters.base.Adapter`.

One module per data set reads it exactly as published (file names, CSV columns, XML, DICOM tags);
:mod:`convirt.data.prepare` writes every one the same way (manifest, pinned splits, summary).
"""

from __future__ import annotations

import importlib

from convirt.data.adapters.base import Adapter, Options, Table
from convirt.errors import DataError

# module -> the names of the adapters it defines, in the order `--list` shows them
_MODULES = {
    "mimic_cxr": ("mimic-cxr",), "chexpert": ("chexpert-plus", "chexpert"), "iu_xray": ("iu-xray",),
    "roco": ("roco",), "covid_notes": ("covid-notes",), "folder": ("folder",),
    "rsna": ("rsna-pneumonia",), "covidx": ("covidx",), "mura": ("mura",), "kermany": ("kermany",),
    "siim": ("siim-pneumothorax",), "benchmarks": ("chexpert-8x200", "chexpert-5x200"),
}


def registry() -> dict[str, Adapter]:
    """Every adapter by name: image-text sets first, then labelled sets, then benchmarks."""
    found = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"convirt.data.adapters.{module_name}")
        for adapter in getattr(module, "ADAPTERS", None) or (module.ADAPTER,):
            found[adapter.name] = adapter
    order = {"image-text": 0, "labelled": 1, "benchmark": 2}
    return dict(sorted(found.items(), key=lambda kv: order[kv[1].kind]))


def get_adapter(name: str) -> Adapter:
    adapters = registry()
    if name not in adapters:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(adapters)} (`convirt data prepare --list`)")
    return adapters[name]


__all__ = ["Adapter", "Options", "Table", "registry", "get_adapter"]
