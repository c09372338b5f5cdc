"""Built-in defense plugins (installed as ``benchsuite.defenses``)."""
