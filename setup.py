"""Builds the optional C kernels (bncore._cpu); all metadata lives in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and bncore
computes the same results with NumPy, more slowly.
"""

from setuptools import Extension, setup

# Reassociating sums lets the compiler vectorize them (like NumPy's pairwise sums); it keeps
# NaN/Inf semantics (no -ffinite-math-only), which the NaN policies rely on.
FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]

# OpenMP splits big arrays over the cores (moments_mt, affine_mt); without it they run on one.
OPENMP = ["-fopenmp"]

setup(
    ext_modules=[
        Extension(
            "bncore._cpu",
            ["bncore/_cpu.c"],
            extra_compile_args=FLAGS + OPENMP,
            extra_link_args=OPENMP,
            optional=True,
        )
    ]
)
