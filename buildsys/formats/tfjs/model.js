// model.js: load and run this model with TensorFlow.js (shipped by modelbuild, the same bytes in every
// tfjs artifact; signature.json next to model.json says what this model takes and returns).
//
// With a bundler (Vite, webpack, esbuild) after `npm install @tensorflow/tfjs-core
// @tensorflow/tfjs-converter @tensorflow/tfjs-backend-wasm` (or any other backend):
//
//   import "@tensorflow/tfjs-backend-wasm";
//   import { load, predict, tf } from "./model.js";
//   await tf.setBackend("wasm");
//   const model = await load(new URL("./model.json", import.meta.url));
//   const out = await predict(model, { image: new Float32Array(64) });   // or { image: { data, dims } }
//   console.log(out.logits.shape, await out.logits.data());              // outputs by name, as tf.Tensor
//
// Inputs and outputs are in the artifact's layout: signature.json's "shape" (channels last where
// the converter moved them; "perm" maps the PyTorch axes onto them). Types are tfjs dtypes
// (float32 → Float32Array, int32 → Int32Array, bool → Uint8Array). A bare typed array takes its
// dims from the signature, its one dynamic axis (the batch) from the array's length. The caller
// disposes the returned tensors.

import * as tf from "@tensorflow/tfjs-core";
import { loadGraphModel } from "@tensorflow/tfjs-converter";

export { tf };

const ARRAYS = { float32: Float32Array, int32: Int32Array, bool: Uint8Array };

/** Fetch signature.json next to `url` and load the graph model (model.json and its weight shards). */
export async function load(url, options = {}) {
  const modelUrl = new URL(url, globalThis.location?.href);
  const signature = await fetchSignature(modelUrl);
  const graph = await loadGraphModel(modelUrl.href, options);
  return { graph, signature };
}

/** Run the model on `inputs` ({name: typed array | {data, dims} | tf.Tensor}); outputs by name. */
export async function predict(model, inputs) {
  const feeds = {};
  const made = [];
  try {
    for (const spec of model.signature.inputs) {
      if (!(spec.name in inputs)) {
        const names = model.signature.inputs.map((i) => i.name).join(", ");
        throw new Error(`missing input "${spec.name}" (the model takes ${names})`);
      }
      const value = inputs[spec.name];
      feeds[spec.node] = value instanceof tf.Tensor ? value : toTensor(spec, value);
      if (feeds[spec.node] !== value) made.push(feeds[spec.node]);
    }
    const nodes = model.signature.outputs.map((o) => o.node);
    let results = await model.graph.executeAsync(feeds, nodes);
    if (!Array.isArray(results)) results = [results];
    return Object.fromEntries(model.signature.outputs.map((o, i) => [o.name, results[i]]));
  } finally {
    tf.dispose(made);
  }
}

function toTensor(spec, value) {
  const { data, dims } = ArrayBuffer.isView(value) ? { data: value, dims: undefined } : value;
  const want = ARRAYS[spec.type];
  if (!(data instanceof want)) {
    throw new Error(`input "${spec.name}" must be a ${want.name} (${spec.type}), not ${data?.constructor?.name}`);
  }
  return tf.tensor(data, dims ?? shapeFor(spec, data.length), spec.type);
}
