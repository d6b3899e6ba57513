"""Checkpoint loading and architecture adapters."""
from edgequant.models.adapters import ArchitectureAdapter, LinearGroup, adapter_for
from edgequant.models.loading import LoadedModel, load_model, resolve_model_path

__all__ = ["ArchitectureAdapter", "LinearGroup", "LoadedModel", "adapter_for", "load_model", "resolve_model_path"]
