// The compiled half of the Python package (module raggedattn._raggedattn).
//
// Turns DLPack and buffer-protocol arrays into TensorViews without copying,
// releases the GIL and calls raggedattn::ragged_decode_attention. The public
// function, its keyword handling and the round trip back into numpy, JAX or
// PyTorch live in raggedattn/__init__.py; everything here works on plain CPU
// arrays whose memory the caller keeps alive for the call.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "raggedattn/raggedattn.h"

namespace nb = nanobind;

namespace raggedattn {
namespace python {
namespace {

// Inputs: any dtype, rank and device, read only. No constraint means
// nanobind never converts, so the view aliases the caller's memory.
using InputArray = nb::ndarray<nb::ro>;
// Outputs: allocated by raggedattn/__init__.py, written in place.
using OutputArray = nb::ndarray<>;

constexpr nb::dlpack::dtype kBFloat16{
    static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};

// Returns the layout the C++ validator prints for `name`, so errors raised
// here read like the library's own.
const char* Layout(const std::string& name) {
  if (name == "query") return "[batch, num_qo_heads, head_dim]";
  if (name == "key") return "[batch, seq_len, num_kv_heads, head_dim]";
  if (name == "value") return "[batch, seq_len, num_kv_heads, head_dim_v]";
  if (name == "output") return "[batch, num_qo_heads, head_dim_v]";
  if (name == "lse") return "[batch, num_qo_heads]";
  if (name == "softmax_aux") return "[num_sinks] or [num_heads, num_sinks]";
  return "[batch]";
}

// Returns the dtypes `name` may hold, worded as the C++ validator words them.
const char* ExpectedDTypes(const std::string& name) {
  if (name == "sequence_start" || name == "sequence_end") return "i32";
  if (name == "lse") return "f32";
  return "f32, bf16 or f16";
}

// Returns a short name for a DLPack dtype in the library's style: "f64",
// "i64", "u16", "bf16", "bool", "c64".
std::string DTypeName(nb::dlpack::dtype dtype) {
  std::string prefix;
  switch (static_cast<nb::dlpack::dtype_code>(dtype.code)) {
    case nb::dlpack::dtype_code::Int:
      prefix = "i";
      break;
    case nb::dlpack::dtype_code::UInt:
      prefix = "u";
      break;
    case nb::dlpack::dtype_code::Float:
      prefix = "f";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      prefix = "bf";
      break;
    case nb::dlpack::dtype_code::Complex:
      prefix = "c";
      break;
    case nb::dlpack::dtype_code::Bool:
      return "bool";
    default:
      prefix = "dlpack_code" + std::to_string(dtype.code) + "_";
  }
  std::string name = prefix + std::to_string(dtype.bits);
  if (dtype.lanes != 1) name += "x" + std::to_string(dtype.lanes);
  return name;
}

// Returns the library dtype of `dtype`, reading 16-bit unsigned integers as
// bf16 when `as_bfloat16` (numpy cannot export ml_dtypes.bfloat16 through
// DLPack or the buffer protocol, so raggedattn/__init__.py passes a uint16
// view of the same memory). Throws InvalidArgument for any other dtype.
DType ToDType(nb::dlpack::dtype dtype, const std::string& name,
              bool as_bfloat16) {
  using Code = nb::dlpack::dtype_code;
  const auto code = static_cast<Code>(dtype.code);
  if (dtype.lanes == 1) {
    if (as_bfloat16 && code == Code::UInt && dtype.bits == 16) {
      return DType::kBF16;
    }
    if (code == Code::Float && dtype.bits == 32) return DType::kF32;
    if (code == Code::Float && dtype.bits == 16) return DType::kF16;
    if (code == Code::Bfloat && dtype.bits == 16) return DType::kBF16;
    if (code == Code::Int && dtype.bits == 32) return DType::kI32;
  }
  throw InvalidArgument(name + ": dtype " + DTypeName(dtype) + ", expected " +
                        ExpectedDTypes(name));
}

// Returns a TensorView aliasing `array`. Extents of 0 or 1 carry arbitrary
// strides in numpy and PyTorch (a [4, 1, 8] slice may report any stride for
// its middle axis); no element is ever addressed through them, so they are
// normalised to what the validator expects instead of being rejected.
template <typename Array>
TensorView ToView(const Array& array, const std::string& name,
                  bool as_bfloat16) {
  if (array.device_type() != nb::device::cpu::value) {
    throw InvalidArgument(name + ": the array lives on DLPack device type " +
                          std::to_string(array.device_type()) +
                          ", expected a CPU array");
  }
  const int rank = static_cast<int>(array.ndim());
  if (rank > kMaxRank) {
    throw InvalidArgument(name + ": rank " + std::to_string(rank) +
                          ", expected " + Layout(name));
  }

  TensorView view;
  view.data = const_cast<void*>(static_cast<const void*>(array.data()));
  view.dtype = ToDType(array.dtype(), name, as_bfloat16);
  view.rank = rank;
  for (int d = 0; d < rank; ++d) {
    view.shape[d] = static_cast<int64_t>(array.shape(d));
    view.strides[d] = array.stride(d);
    if (view.shape[d] <= 1) view.strides[d] = d == rank - 1 ? 1 : 0;
  }
  return view;
}

bool Contains(const std::vector<std::string>& names, const char* name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Computes into `output` (and `lse` when given). Every tensor argument is
// named so that errors say which one is wrong; `bfloat16_names` lists the
// arguments passed as uint16 views of bf16 data.
void RaggedDecodeAttention(
    const InputArray& query, const InputArray& key, const InputArray& value,
    const InputArray& sequence_start, const InputArray& sequence_end,
    const OutputArray& output, const std::optional<OutputArray>& lse,
    const std::optional<InputArray>& softmax_aux,
    std::optional<double> softmax_scale, std::optional<int64_t> block_size,
    std::optional<std::pair<int64_t, int64_t>> sliding_window,
    std::optional<double> logits_soft_cap, int num_threads,
    const std::vector<std::string>& bfloat16_names) {
  auto view = [&](const auto& array, const char* name) {
    return ToView(array, name, Contains(bfloat16_names, name));
  };
  const TensorView query_view = view(query, "query");
  const TensorView key_view = view(key, "key");
  const TensorView value_view = view(value, "value");
  const TensorView start_view = view(sequence_start, "sequence_start");
  const TensorView end_view = view(sequence_end, "sequence_end");
  const TensorView output_view = view(output, "output");
  std::optional<TensorView> lse_view;
  if (lse) lse_view = view(*lse, "lse");
  std::optional<TensorView> aux_view;
  if (softmax_aux) aux_view = view(*softmax_aux, "softmax_aux");

  Options options;
  options.softmax_scale = softmax_scale;
  options.block_size = block_size;
  if (sliding_window) {
    options.sliding_window =
        SlidingWindow{sliding_window->first, sliding_window->second};
  }
  options.logits_soft_cap = logits_soft_cap;
  options.num_threads = num_threads;

  // The arrays stay referenced by this frame's arguments, so their memory
  // outlives the call while other Python threads run.
  nb::gil_scoped_release release;
  ragged_decode_attention(query_view, key_view, value_view, start_view,
                          end_view, output_view, options,
                          aux_view ? &*aux_view : nullptr,
                          lse_view ? &*lse_view : nullptr);
}

// Returns a bf16 DLPack view of a uint16 array's memory, keeping the array
// alive, so torch.from_dlpack and jax.numpy.from_dlpack can wrap a numpy
// bf16 buffer without a copy.
nb::ndarray<nb::array_api> BFloat16View(nb::handle owner) {
  const auto bits = nb::cast<OutputArray>(owner);
  if (bits.dtype() != nb::dtype<uint16_t>()) {
    throw InvalidArgument("bfloat16_view: dtype " + DTypeName(bits.dtype()) +
                          ", expected u16");
  }
  std::vector<size_t> shape(bits.ndim());
  for (size_t d = 0; d < bits.ndim(); ++d) shape[d] = bits.shape(d);
  return nb::ndarray<nb::array_api>(bits.data(), bits.ndim(), shape.data(),
                                    owner, bits.stride_ptr(), kBFloat16,
                                    nb::device::cpu::value);
}

}  // namespace
}  // namespace python
}  // namespace raggedattn

NB_MODULE(_raggedattn, m) {
  m.doc() =
      "Compiled core of raggedattn; use raggedattn.ragged_decode_attention.";

  nb::register_exception_translator([](const std::exception_ptr& error, void*) {
    try {
      std::rethrow_exception(error);
    } catch (const raggedattn::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const raggedattn::RuntimeError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("ragged_decode_attention", &raggedattn::python::RaggedDecodeAttention,
        nb::arg("query"), nb::arg("key"), nb::arg("value"),
        nb::arg("sequence_start"), nb::arg("sequence_end"), nb::arg("output"),
        nb::arg("lse").none(), nb::arg("softmax_aux").none(),
        nb::arg("softmax_scale").none(), nb::arg("block_size").none(),
        nb::arg("sliding_window").none(), nb::arg("logits_soft_cap").none(),
        nb::arg("num_threads"), nb::arg("bfloat16_names"),
        "Low-level entry point: writes into preallocated output (and lse). "
        "Arguments are already checked by raggedattn.ragged_decode_attention.");
  m.def("bfloat16_view", &raggedattn::python::BFloat16View, nb::arg("bits"),
        "Returns a bf16 DLPack view of a uint16 array's memory.");
  m.def(
      "data_pointer",
      [](const raggedattn::python::InputArray& array) {
        return reinterpret_cast<uintptr_t>(array.data());
      },
      nb::arg("array"),
      "Returns the address the extension reads `array` from (tests use it "
      "to prove views are not copied).");
  m.def("active_simd_target", &raggedattn::active_simd_target,
        "Returns the SIMD target calls dispatch to, e.g. 'AVX3'.");
}
