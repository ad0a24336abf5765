"""Build hook for the compiled record decoder; everything else is in pyproject.toml.

The extension is optional: without a C compiler the package installs and
decodes in pure Python, more slowly (`trackgate ingest` logs which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trackgate.protocol._speedups",
            ["services/trackgate/protocol/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
