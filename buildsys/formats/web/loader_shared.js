
// What every modelbuild loader does the same way, whichever library runs the model: read
// signature.json and give a bare typed array its dims. (modelbuild appends this part of the loader
// to the family's own when it ships model.js.)

async function fetchSignature(modelUrl) {
  const response = await fetch(new URL("signature.json", modelUrl));
  if (!response.ok) {
    throw new Error(`cannot fetch signature.json next to ${modelUrl}: HTTP ${response.status}`);
  }
  return response.json();
}

function shapeFor(spec, length) {
  const known = spec.shape.filter((d) => typeof d === "number").reduce((a, b) => a * b, 1);
  const free = spec.shape.filter((d) => typeof d !== "number").length;
  if (free > 1) throw new Error(`input "${spec.name}" has ${free} dynamic axes: pass { data, dims }`);
  if ((free === 0 && length !== known) || length % known !== 0) {
    throw new Error(`input "${spec.name}" has ${length} elements, which does not fit shape [${spec.shape}]`);
  }
  return spec.shape.map((d) => (typeof d === "number" ? d : length / known));
}
