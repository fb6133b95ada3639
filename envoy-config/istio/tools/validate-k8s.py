"""Validates the Kubernetes objects of rendered manifests against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are
errors). Istio kinds are skipped here; validate-istio.mjs checks them.

usage: validate-k8s.py KUBERNETES_VERSION OVERLAY=FILE...

Prints one line per error, `OVERLAY: KIND/NAME: FIELD: MESSAGE`, and
exits 1 if there was any.
"""

import sys

import kubernetes_validate
import yaml

ISTIO_GROUPS = ("networking.istio.io/", "extensions.istio.io/", "security.istio.io/", "telemetry.istio.io/")


def field_path(error):
    path = ".".join(str(part) for part in error.path)
    return path or "(object)"


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    version = argv[1]
    failures = 0
    checked = 0
    for argument in argv[2:]:
        overlay, _, file_name = argument.partition("=")
        with open(file_name, encoding="utf-8") as stream:
            documents = [doc for doc in yaml.safe_load_all(stream) if doc]
        for doc in documents:
            kind = doc.get("kind", "?")
            name = (doc.get("metadata") or {}).get("name", "?")
            if str(doc.get("apiVersion", "")).startswith(ISTIO_GROUPS):
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as error:
                failures += 1
                print(f"{overlay}: {kind}/{name}: {field_path(error)}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                failures += 1
                print(f"{overlay}: {kind}/{name}: apiVersion: {error.message}")
    print(f"kubernetes-validate {version}: {checked} objects valid, {failures} errors", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
