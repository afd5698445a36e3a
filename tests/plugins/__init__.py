"""v2.0 plug-ins used by the tests: one faithful, two padded/packed variants, two deliberately broken."""
