// Validates the Istio objects of rendered manifests against Istio's CRD
// OpenAPI schemas, as compiled into @kubernetes-models/istio.
//
// usage: node validate-istio.mjs NODE_MODULES_DIR OVERLAY=FILE.json...
//
// Each FILE.json is a JSON array of the overlay's objects (the Rust test
// converts the rendered YAML, so no YAML parser is needed here). Prints one
// line per error, `OVERLAY: KIND/NAME: FIELD: MESSAGE`, exits 1 if any.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "extensions.istio.io/v1alpha1/WasmPlugin.js",
  "networking.istio.io/v1/VirtualService": "networking.istio.io/v1/VirtualService.js",
  "networking.istio.io/v1/DestinationRule": "networking.istio.io/v1/DestinationRule.js",
  "networking.istio.io/v1/Gateway": "networking.istio.io/v1/Gateway.js",
  "networking.istio.io/v1/Sidecar": "networking.istio.io/v1/Sidecar.js",
  "networking.istio.io/v1/ServiceEntry": "networking.istio.io/v1/ServiceEntry.js",
  "networking.istio.io/v1alpha3/EnvoyFilter": "networking.istio.io/v1alpha3/EnvoyFilter.js",
};

const [modulesDir, ...inputs] = process.argv.slice(2);
if (!modulesDir || inputs.length === 0) {
  console.error("usage: node validate-istio.mjs NODE_MODULES_DIR OVERLAY=FILE.json...");
  process.exit(2);
}
let failures = 0;
let checked = 0;
for (const input of inputs) {
  const split = input.indexOf("=");
  const overlay = input.slice(0, split);
  const objects = JSON.parse(readFileSync(input.slice(split + 1), "utf8"));
  for (const object of objects) {
    const apiVersion = String(object.apiVersion ?? "");
    if (!apiVersion.includes("istio.io/")) continue;
    const id = `${overlay}: ${object.kind}/${object.metadata?.name ?? "?"}`;
    const model = MODELS[`${apiVersion}/${object.kind}`];
    if (!model) {
      failures++;
      console.log(`${id}: apiVersion: no Istio schema here for ${apiVersion} ${object.kind}`);
      continue;
    }
    const file = pathToFileURL(join(modulesDir, "@kubernetes-models", "istio", model)).href;
    const Model = (await import(file))[object.kind];
    try {
      new Model(object).validate();
      checked++;
    } catch (error) {
      for (const problem of error.errors ?? [{ instancePath: "", message: error.message }]) {
        failures++;
        const field = problem.instancePath.replace(/^\//, "").replaceAll("/", ".") || "(object)";
        const allowed = problem.params?.allowedValues ? ` (${problem.params.allowedValues.join(", ")})` : "";
        console.log(`${id}: ${field}: ${problem.message}${allowed}`);
      }
    }
  }
}
console.error(`@kubernetes-models/istio: ${checked} objects valid, ${failures} errors`);
process.exit(failures ? 1 : 0);
