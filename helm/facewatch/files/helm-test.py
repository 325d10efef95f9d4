"""`helm test`: the workers' Service answers /readyz with 200 (some worker is ready) and /metrics with the
worker's metrics. Retries for a while: after an install, models and the watchlist take time to load."""

import sys
import time
import urllib.error
import urllib.request

base, wait_s = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + wait_s
problem = ""
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            print("readyz:", response.status, response.read().decode())
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        if "facewatch_ready 1.0" in metrics and "facewatch_build_info" in metrics:
            print("metrics: facewatch_ready 1.0, facewatch_build_info present")
            sys.exit(0)
        problem = "metrics: no facewatch_ready 1.0 or facewatch_build_info"
    except urllib.error.HTTPError as exc:
        problem = f"{exc.url}: {exc.code} {exc.read().decode()}"
    except OSError as exc:
        problem = f"{base}: {exc}"
    if time.monotonic() > deadline:
        print(f"not ready within {wait_s:.0f} s: {problem}", file=sys.stderr)
        sys.exit(1)
    time.sleep(5)
