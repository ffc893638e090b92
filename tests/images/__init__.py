"""Tests of the container images: the scripts they run, their Python requirements, their Dockerfiles and build script."""
