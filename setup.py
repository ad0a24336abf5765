"""Build hook for the two C extensions; everything else is in pyproject.toml.

``trackgate.protocol._speedups`` decodes AVL records and
``trackgate.core._resp`` packs them as stream entries for Redis. Both are
optional: without a C compiler the package installs and runs the same code
in pure Python, more slowly (`trackgate ingest` logs which one runs).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "trackgate.protocol._speedups",
            ["services/trackgate/protocol/_speedups.c"],
            optional=True,
            extra_compile_args=FLAGS,
        ),
        Extension(
            "trackgate.core._resp",
            ["services/trackgate/core/_resp.c"],
            optional=True,
            extra_compile_args=FLAGS,
        ),
    ]
)
