"""Write the `config` part of helm/facewatch/values.schema.json from the worker's pydantic settings.

    python scripts/chart_values_schema.py          # rewrite it
    python scripts/chart_values_schema.py --check  # exit 1 when it is out of date (tests/ops runs this)

The part is `facewatch config schema` (every section and key, unknown keys refused, so a typo in
values fails `helm lint` and `helm install` instead of crash-looping the pods) plus what the chart
itself needs: the Kafka bootstrap servers, the frames topic consumed, a watchlist store, an HTTP
port for the probes, and no password in a ConfigMap.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.cli.config_cmd import config_json_schema  # noqa: E402

SCHEMA = ROOT / "helm" / "facewatch" / "values.schema.json"
PASSWORD_HINT = "set FACEWATCH_KAFKA__SASL_PASSWORD through secrets, not in config"


def chart_config_schema() -> dict[str, Any]:
    """The schema of the chart's `config` value: a facewatch config file, with the chart's requirements."""
    schema = copy.deepcopy(config_json_schema())
    for key in ("$schema", "title"):
        schema.pop(key)
    schema["description"] = (
        "The worker's configuration file (docs/configuration.md); generated from worker/config.py by "
        "scripts/chart_values_schema.py."
    )
    sections = schema["properties"]
    sections["kafka"]["required"] = ["bootstrap_servers"]
    sections["kafka"]["properties"]["bootstrap_servers"]["minLength"] = 1
    # Whatever is in config lands in a ConfigMap: a password must come from a Secret instead.
    sections["kafka"]["properties"]["sasl_password"] = {
        "description": "Forbidden here (it would land in a ConfigMap): set FACEWATCH_KAFKA__SASL_PASSWORD through "
        "secrets.",
        "enum": [PASSWORD_HINT],
    }
    sections["frames"]["required"] = ["enabled"]
    sections["frames"]["properties"]["enabled"] = {
        "const": True,
        "description": "The chart's workers consume the frames topic that its ingest Deployments fill.",
    }
    store = sections["watchlist"]["properties"]["store"]
    sections["watchlist"]["required"] = ["store"]
    sections["watchlist"]["properties"]["store"] = {
        "type": "string",
        "minLength": 1,
        "description": store.get("description", "") + " Inside watchlist.mountPath (the chart checks it).",
    }
    sections["http"]["properties"]["port"]["minimum"] = 1  # the probes and Prometheus need the endpoints
    schema["required"] = ["kafka", "frames", "watchlist"]
    return schema


def render() -> str:
    """values.schema.json with its `config` part regenerated (the rest as it is)."""
    values_schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    values_schema["properties"]["config"] = chart_config_schema()
    return json.dumps(values_schema, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; change nothing")
    args = parser.parse_args()
    text = render()
    if args.check:
        if SCHEMA.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA.relative_to(ROOT)} is out of date: run python scripts/chart_values_schema.py")
            return 1
        print(f"{SCHEMA.relative_to(ROOT)} is up to date")
        return 0
    SCHEMA.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
