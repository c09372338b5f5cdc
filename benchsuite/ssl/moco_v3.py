"""Under construction in this session: registers nothing yet."""

from benchsuite.hookspecs import hookimpl


@hookimpl
def benchsuite_ssl_methods() -> list:
    return []
