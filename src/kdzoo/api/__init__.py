"""The Python API, re-exported from `kdzoo` (see docs/api.md)."""
