// modelbuild's LibTorch loader: runs a TorchScript file in C++ (no Python), as a deployed program would.
//
//   libtorch_loader MODEL.pt INPUTS.bin OUTPUTS.bin
//
// INPUTS.bin:  "MBTI" int32 batches, int32 inputs, then per batch `inputs` tensors.
// OUTPUTS.bin: "MBTO" int32 batches, then per batch int32 outputs and per output int32 name length,
//              the name (empty for a positional output), a tensor.
// A tensor:    int32 ScalarType code, int32 ndim, int64 dims[ndim], the contiguous little-endian bytes.
// Exit status: 0 ran, 2 usage or I/O, 3 the model does not load, 4 forward failed. Errors go to stderr.
#include <torch/script.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace {

template <typename T>
T read_value(std::istream& in) {
  T value{};
  in.read(reinterpret_cast<char*>(&value), sizeof(T));
  if (!in) throw std::runtime_error("truncated input file");
  return value;
}

template <typename T>
void write_value(std::ostream& out, T value) {
  out.write(reinterpret_cast<const char*>(&value), sizeof(T));
}

at::Tensor read_tensor(std::istream& in) {
  auto dtype = static_cast<c10::ScalarType>(read_value<int32_t>(in));
  auto ndim = read_value<int32_t>(in);
  std::vector<int64_t> dims;
  for (int32_t i = 0; i < ndim; ++i) dims.push_back(read_value<int64_t>(in));
  at::Tensor tensor = at::empty(dims, at::TensorOptions().dtype(dtype));
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.nbytes()));
  if (!in) throw std::runtime_error("truncated tensor data");
  return tensor;
}

void write_tensor(std::ostream& out, const std::string& name, at::Tensor tensor) {
  tensor = tensor.detach().cpu().contiguous();
  if (tensor.scalar_type() == at::kBFloat16 || tensor.scalar_type() == at::kHalf) tensor = tensor.to(at::kFloat);
  write_value<int32_t>(out, static_cast<int32_t>(name.size()));
  out.write(name.data(), static_cast<std::streamsize>(name.size()));
  write_value<int32_t>(out, static_cast<int32_t>(tensor.scalar_type()));
  write_value<int32_t>(out, static_cast<int32_t>(tensor.dim()));
  for (auto size : tensor.sizes()) write_value<int64_t>(out, size);
  out.write(static_cast<const char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.nbytes()));
}

// The forward's result as (name, tensor) pairs: a tensor, a tuple or list of tensors, or a dict by key.
std::vector<std::pair<std::string, at::Tensor>> flatten(const c10::IValue& value) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (value.isTensor()) {
    out.emplace_back("", value.toTensor());
  } else if (value.isTuple()) {
    for (const auto& item : value.toTupleRef().elements()) out.emplace_back("", item.toTensor());
  } else if (value.isList()) {
    for (const auto& item : value.toListRef()) out.emplace_back("", item.toTensor());
  } else if (value.isGenericDict()) {
    for (const auto& item : value.toGenericDict()) out.emplace_back(item.key().toStringRef(), item.value().toTensor());
  } else {
    throw std::runtime_error("forward returned " + value.tagKind() + ", not tensors");
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt INPUTS.bin OUTPUTS.bin\n";
    return 2;
  }
  torch::jit::Module module;
  try {
    module = torch::jit::load(argv[1], torch::kCPU);
    module.eval();
  } catch (const std::exception& exc) {
    std::cerr << "torch::jit::load failed: " << exc.what() << "\n";
    return 3;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::ofstream out(argv[3], std::ios::binary);
  if (!in || !out) {
    std::cerr << "cannot open " << (in ? argv[3] : argv[2]) << "\n";
    return 2;
  }
  int32_t batches = 0, inputs = 0;
  try {
    char magic[4];
    in.read(magic, 4);
    if (!in || std::string(magic, 4) != "MBTI") throw std::runtime_error("not an MBTI input file");
    batches = read_value<int32_t>(in);
    inputs = read_value<int32_t>(in);
  } catch (const std::exception& exc) {
    std::cerr << exc.what() << "\n";
    return 2;
  }
  out.write("MBTO", 4);
  write_value<int32_t>(out, batches);
  c10::InferenceMode guard;
  for (int32_t b = 0; b < batches; ++b) {
    std::vector<c10::IValue> args;
    try {
      for (int32_t i = 0; i < inputs; ++i) args.emplace_back(read_tensor(in));
    } catch (const std::exception& exc) {
      std::cerr << exc.what() << "\n";
      return 2;
    }
    std::vector<std::pair<std::string, at::Tensor>> results;
    try {
      results = flatten(module.forward(args));
    } catch (const std::exception& exc) {
      std::cerr << "forward failed: " << exc.what() << "\n";
      return 4;
    }
    write_value<int32_t>(out, static_cast<int32_t>(results.size()));
    for (auto& [name, tensor] : results) write_tensor(out, name, tensor);
  }
  out.close();
  return out ? 0 : 2;
}
