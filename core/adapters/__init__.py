"""Built-in v2.0 plug-ins: other ESM-2 implementations run over the same fair-esm weights."""
