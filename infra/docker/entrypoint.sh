#!/bin/sh
# The image's entrypoint: nqexp. `docker run IMAGE run SPEC` runs `nqexp run SPEC`.
#
# Ray's cluster launcher starts its containers as `docker run … IMAGE bash`, and people run
# `docker run IMAGE ray …` or `… python …`, so a first argument that is a program on PATH runs as
# is. nqexp's own commands come first (coreutils has a `sync`); tests/test_infra.py keeps this
# list equal to `nqexp --help`.
set -e
case "${1:-}" in
    "" | -* | data | doctor | features | init | predict | report | run | runs | spec | sweep | sync)
        exec nqexp "$@" ;;
esac
if command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec nqexp "$@"
