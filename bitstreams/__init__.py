"""One folder per overlay build: ``manifest.json`` (and ``.bit``/``.hwh`` with checksums once built)."""
