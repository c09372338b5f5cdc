"""Built-in attack plugins (installed as ``benchsuite.attacks``)."""
