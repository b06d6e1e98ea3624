// model.js: load and run this model with ONNX Runtime Web (shipped by modelbuild, the same bytes in
// every web artifact; signature.json next to model.onnx says what this model takes and returns).
//
// With a bundler (Vite, webpack, esbuild) after `npm install onnxruntime-web`:
//
//   import { load, predict } from "./model.js";
//   const model = await load(new URL("./model.onnx", import.meta.url));
//   const out = await predict(model, { x: new Float32Array(8) });   // or { x: { data, dims: [2, 4] } }
//   console.log(out.y.dims, out.y.data);                             // outputs by name, as ort.Tensor
//
// Without a bundler, map the bare name with an import map, e.g.
//   <script type="importmap">{"imports": {"onnxruntime-web": "/ort/ort.wasm.min.mjs"}}</script>
// and set ort.env.wasm.wasmPaths to where the .wasm files are served.
//
// Inputs are typed arrays of signature.json's "type" (float32 → Float32Array, int64 →
// BigInt64Array, float16 → Float16Array or Uint16Array bits, bool → Uint8Array). A bare typed array
// takes its dims from the signature, its one dynamic axis (e.g. "batch") from the array's length;
// pass { data, dims } when an input has more than one dynamic axis.

import * as ort from "onnxruntime-web";

export { ort };

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
  uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array, float16: globalThis.Float16Array ?? Uint16Array,
};

/** Fetch signature.json next to `url` and create an InferenceSession on the wasm backend. */
export async function load(url, options = {}) {
  const modelUrl = new URL(url, globalThis.location?.href);
  const signature = await fetchSignature(modelUrl);
  const session = await ort.InferenceSession.create(modelUrl.href, { executionProviders: ["wasm"], ...options });
  return { session, signature };
}

/** Run the model on `inputs` ({name: typed array | {data, dims} | ort.Tensor}); outputs by name. */
export async function predict(model, inputs) {
  const feeds = {};
  for (const spec of model.signature.inputs) {
    if (!(spec.name in inputs)) {
      const names = model.signature.inputs.map((i) => i.name).join(", ");
      throw new Error(`missing input "${spec.name}" (the model takes ${names})`);
    }
    feeds[spec.name] = toTensor(spec, inputs[spec.name]);
  }
  const results = await model.session.run(feeds);
  return Object.fromEntries(model.signature.outputs.map((o) => [o.name, results[o.name]]));
}

function toTensor(spec, value) {
  if (value instanceof ort.Tensor) return value;
  const { data, dims } = ArrayBuffer.isView(value) ? { data: value, dims: undefined } : value;
  const want = ARRAYS[spec.type];
  const halfBits = spec.type === "float16" && data instanceof Uint16Array;
  if (!(data instanceof want) && !halfBits) {
    throw new Error(`input "${spec.name}" must be a ${want.name} (${spec.type}), not ${data?.constructor?.name}`);
  }
  return new ort.Tensor(spec.type, data, dims ?? shapeFor(spec, data.length));
}
