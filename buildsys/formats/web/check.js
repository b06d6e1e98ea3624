// The half of modelbuild's check pages that is the same whichever library runs the model (web/browser.py
// serves it as check.js next to the family's check.html). Python drives window.runCall through the
// browser: one call's inputs arrive as one binary body from GET /io/in/<id>, its outputs leave as one
// binary body by POST /io/out/<id>.

/**
 * Load the model with `load()` into window.model, then serve calls with the artifact's `predict`;
 * window.ready says "ok" or "error: …". The page says how its library holds tensors: `input(type, bytes)`
 * makes an input's typed array from its bytes, `output(tensor)` gives an output's { type, dims, data }
 * (a typed array), `release(tensors)` frees the outputs once read.
 */
export async function serve(load, { predict, input, output, release = () => {} }) {
  async function runCall(call) {
    const response = await fetch(`/io/in/${call.id}`);
    if (!response.ok) throw new Error(`inputs ${call.id}: HTTP ${response.status}`);
    const body = await response.arrayBuffer();
    const inputs = {};
    for (const i of call.inputs) {
      inputs[i.name] = { data: input(i.type, body.slice(i.offset, i.offset + i.length)), dims: i.dims };
    }
    const outputs = await predict(window.model, inputs);
    const parts = [];
    const meta = [];
    try {
      for (const [name, tensor] of Object.entries(outputs)) {
        if (!tensor) throw new Error(`the model returned no output "${name}"`);
        const { type, dims, data } = await output(tensor);
        const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        meta.push({ name, type, dims, length: bytes.byteLength });
        parts.push(bytes.slice());
      }
    } finally {
      release(Object.values(outputs));
    }
    const posted = await fetch(`/io/out/${call.id}`, { method: "POST", body: new Blob(parts) });
    if (!posted.ok) throw new Error(`outputs ${call.id}: HTTP ${posted.status}`);
    return meta;
  }

  try {
    window.model = await load();
    window.runCall = runCall;
    window.ready = "ok";
  } catch (error) {
    window.ready = `error: ${error?.message ?? error}`;
  }
}
