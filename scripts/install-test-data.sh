#!/usr/bin/env bash
# Install the real data the tests read from two Debian packages, when missing:
#   mricron-data         the AAL atlas on the Colin27 T1 (/usr/share/mricron/templates)
#   invesalius-examples  a head CT (/usr/share/doc/invesalius-examples/examples/Cranium.inv3)
# and the browser that renders the Prefect UI for tests/test_dashboard.py's screenshot:
#   chromium             headless Chromium (`chromium` on PATH), with fonts-liberation
set -euo pipefail

need=()
[ -f /usr/share/mricron/templates/aal.nii.gz ] || need+=(mricron-data)
[ -f /usr/share/doc/invesalius-examples/examples/Cranium.inv3 ] || need+=(invesalius-examples)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-liberation)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-data: the tests need Debian's ${need[*]} (apt-get not found)" >&2
  exit 2
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "install-test-data: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for file in /usr/share/mricron/templates/aal.nii.gz \
            /usr/share/doc/invesalius-examples/examples/Cranium.inv3; do
  if [ ! -f "$file" ]; then
    echo "install-test-data: $file is still missing after the install" \
         "(does dpkg exclude /usr/share/doc here? see /etc/dpkg/dpkg.cfg.d)" >&2
    exit 2
  fi
done
if ! command -v chromium >/dev/null 2>&1; then
  echo "install-test-data: chromium is still missing after the install" >&2
  exit 2
fi
