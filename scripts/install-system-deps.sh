#!/usr/bin/env bash
# Install the system packages the test suite needs (Debian/Ubuntu, apt):
#   - GStreamer's RTSP server and its Python bindings (tests/infra/rtsp_server_main.py runs
#     under the system /usr/bin/python3, because python3-gi is built for it, not for the venv);
#   - Prometheus (promtool for rule checks, the server for real scrape tests).
# Idempotent: when every package is already installed it does nothing, not even apt-get update.
# Uses sudo only when not run as root.
set -euo pipefail

PACKAGES=(
  gir1.2-gst-rtsp-server-1.0
  python3-gi
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  prometheus
)

die() {
  echo "install-system-deps: ERROR: $*" >&2
  exit 1
}

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
  die "apt-get/dpkg-query not found: this script supports Debian/Ubuntu only. Install these packages by other means: ${PACKAGES[*]}"
fi

# Check the result the way the tests use it, so a broken install fails here and not in a test.
verify() {
  /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" \
    || die "GstRtspServer bindings are not importable by /usr/bin/python3"
  command -v prometheus >/dev/null 2>&1 || die "prometheus binary not on PATH"
  command -v promtool >/dev/null 2>&1 || die "promtool binary not on PATH"
}

# A package counts as present only when dpkg says it is fully installed (not just known/removed).
missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-system-deps: all present: ${PACKAGES[*]}"
  verify
  exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is not available; run as root to install: ${missing[*]}"
  SUDO=(sudo)
fi

echo "install-system-deps: installing: ${missing[*]}"
# Through env, because sudo resets the environment and would drop an exported DEBIAN_FRONTEND.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || die "apt-get install failed for: ${missing[*]}"

verify
echo "install-system-deps: done"
