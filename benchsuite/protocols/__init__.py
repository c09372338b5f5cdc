"""Protocols: per threat kind and per defense kind, the stages a cell runs and the rows it gives."""
