# images.sh — sourced by scripts/serve and scripts/cluster: the images a server offers.
#
# Sets the array `images`, the default first: $CI_IMAGE if set; else python:3.12-slim when
# Docker Hub answers; else the stand-ins built from Debian packages (Python 3.11 and 3.13),
# served by a registry on loopback (scripts/registry).
choose_images() {
  images=()
  if [ -n "${CI_IMAGE:-}" ]; then
    images=("$CI_IMAGE")
  # A real registry answers /v2/ with this header (401 or 200); a proxy's error page does not.
  elif curl -s -m 5 -o /dev/null -D - https://registry-1.docker.io/v2/ 2>/dev/null |
    grep -qi '^docker-distribution-api-version:'; then
    images=(python:3.12-slim)
  else
    echo "==> Docker Hub cannot be reached from here: using stand-in images built from Debian packages (Python 3.11 and 3.13)" >&2
    eval "$(scripts/build-test-image)" >&2
    eval "$(scripts/registry start)"
    # The tags scripts/registry pushes (each named by the Python its image really has).
    images=("$CI_TEST_REGISTRY/library/python:3.11-slim" "$CI_TEST_REGISTRY/library/python:3.13-slim")
  fi
}
