"""certpager: the pieces shared by the exporter and the bridge.

Only what both services need lives here: the ``certpager`` command dispatcher, YAML config loading
with ``$VAR`` expansion and ``*_file`` secrets, logging setup, the HTTP layer both services serve through and the
test/demo PKI generator. ``exporter`` and ``bridge`` never import each other.
"""

__version__ = "0.1.0"
